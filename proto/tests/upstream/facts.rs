//! A flat, comparable description of one protobuf file's descriptors.

use std::collections::{BTreeMap, BTreeSet};

use protox::prost_reflect::{
    DescriptorPool, DynamicMessage, EnumDescriptor, ExtensionDescriptor, MessageDescriptor, Value,
};

/// One line of facts per descriptor, keyed by its kind and full name.
pub type Facts = BTreeMap<String, String>;

/// Describes every descriptor that `file` defines.
pub fn facts(pool: &DescriptorPool, file: &str) -> Facts {
    let file = pool
        .get_file_by_name(file)
        .unwrap_or_else(|| panic!("{file} is not in the descriptor pool"));
    let proto = file.file_descriptor_proto();
    let mut dependencies = proto.dependency.clone();
    dependencies.sort();

    let mut out = Facts::new();
    out.insert(
        format!("file {}", file.name()),
        format!(
            "package={} syntax={} dependencies={dependencies:?} public={:?} weak={:?} options={}",
            file.package_name(),
            proto.syntax(),
            proto.public_dependency,
            proto.weak_dependency,
            options(&file.options()),
        ),
    );
    for message in file.messages() {
        message_facts(&message, &mut out);
    }
    for enumeration in file.enums() {
        enum_facts(&enumeration, &mut out);
    }
    for extension in file.extensions() {
        extension_facts(&extension, &mut out);
    }
    for service in file.services() {
        out.insert(
            format!("service {}", service.full_name()),
            format!("options={}", options(&service.options())),
        );
        for method in service.methods() {
            out.insert(
                format!("rpc {}", method.full_name()),
                format!(
                    "input={} output={} client_streaming={} server_streaming={} options={}",
                    method.input().full_name(),
                    method.output().full_name(),
                    method.is_client_streaming(),
                    method.is_server_streaming(),
                    options(&method.options()),
                ),
            );
        }
    }
    out
}

fn message_facts(message: &MessageDescriptor, out: &mut Facts) {
    let proto = message.descriptor_proto();
    out.insert(
        format!("message {}", message.full_name()),
        format!(
            "reserved_ranges={:?} reserved_names={:?} extension_ranges={:?} options={}",
            proto
                .reserved_range
                .iter()
                .map(|r| (r.start(), r.end()))
                .collect::<Vec<_>>(),
            proto.reserved_name,
            proto
                .extension_range
                .iter()
                .map(|r| (r.start(), r.end()))
                .collect::<Vec<_>>(),
            options(&message.options()),
        ),
    );
    for oneof in message.oneofs() {
        out.insert(
            format!("oneof {}", oneof.full_name()),
            format!(
                "synthetic={} options={}",
                oneof.is_synthetic(),
                options(&oneof.options())
            ),
        );
    }
    for field in message.fields() {
        let proto = field.field_descriptor_proto();
        out.insert(
            format!("field {}", field.full_name()),
            format!(
                "number={} label={:?} type={:?} type_name={} oneof={} proto3_optional={} \
                 json_name={} default={} options={}",
                proto.number(),
                proto.label(),
                proto.r#type(),
                proto.type_name(),
                field
                    .containing_oneof()
                    .map(|o| o.name().to_owned())
                    .unwrap_or_default(),
                proto.proto3_optional(),
                proto.json_name(),
                proto.default_value(),
                options(&field.options()),
            ),
        );
    }
    for nested in message.child_messages() {
        message_facts(&nested, out);
    }
    for enumeration in message.child_enums() {
        enum_facts(&enumeration, out);
    }
    for extension in message.child_extensions() {
        extension_facts(&extension, out);
    }
}

fn enum_facts(enumeration: &EnumDescriptor, out: &mut Facts) {
    let proto = enumeration.enum_descriptor_proto();
    out.insert(
        format!("enum {}", enumeration.full_name()),
        format!(
            "reserved_ranges={:?} reserved_names={:?} options={}",
            proto
                .reserved_range
                .iter()
                .map(|r| (r.start(), r.end()))
                .collect::<Vec<_>>(),
            proto.reserved_name,
            options(&enumeration.options()),
        ),
    );
    for value in enumeration.values() {
        out.insert(
            format!("enum value {}.{}", enumeration.full_name(), value.name()),
            format!(
                "number={} options={}",
                value.number(),
                options(&value.options())
            ),
        );
    }
}

fn extension_facts(extension: &ExtensionDescriptor, out: &mut Facts) {
    let proto = extension.field_descriptor_proto();
    out.insert(
        format!("extension {}", extension.full_name()),
        format!(
            "extendee={} number={} label={:?} type={:?} type_name={} json_name={} options={}",
            extension.containing_message().full_name(),
            proto.number(),
            proto.label(),
            proto.r#type(),
            proto.type_name(),
            proto.json_name(),
            options(&extension.options()),
        ),
    );
}

/// Renders the options that are set, custom extensions as `(full.name)=value`.
fn options(options: &DynamicMessage) -> String {
    let mut set: Vec<String> = options
        .fields()
        .map(|(field, value)| format!("{}={}", field.name(), render(value)))
        .chain(
            options
                .extensions()
                .map(|(ext, value)| format!("({})={}", ext.full_name(), render(value))),
        )
        .chain(
            options
                .unknown_fields()
                .map(|field| format!("unknown#{}", field.number())),
        )
        .collect();
    set.sort();
    format!("[{}]", set.join(", "))
}

fn render(value: &Value) -> String {
    match value {
        Value::Bool(b) => b.to_string(),
        Value::String(s) => format!("{s:?}"),
        other => format!("{other:?}"),
    }
}

/// Lines for each descriptor that differs: `-` ours (or missing upstream),
/// `+` upstream (or missing here), in key order.
pub fn diff(ours: &Facts, upstream: &Facts) -> Vec<String> {
    let mut lines = Vec::new();
    let keys: BTreeSet<&String> = ours.keys().chain(upstream.keys()).collect();
    for key in keys {
        match (ours.get(key), upstream.get(key)) {
            (Some(a), Some(b)) if a == b => {}
            (Some(a), Some(b)) => {
                lines.push(format!("- {key}: {a}"));
                lines.push(format!("+ {key}: {b}"));
            }
            (Some(a), None) => lines.push(format!("- {key}: {a}   (not in upstream)")),
            (None, Some(b)) => lines.push(format!("+ {key}: {b}   (missing here)")),
            (None, None) => unreachable!("key came from one of the maps"),
        }
    }
    lines
}
