//! The gRPC front doors: CSI's Identity, Controller, GroupController and Node
//! services, the admin service `vol` speaks and the peer service daemons speak, each a
//! translation onto the service layer; the one layer every call passes ([`observe`]),
//! answering a call ([`rpc`]), error → status code mapping ([`status`]), and the
//! conversions between records and messages ([`convert`]).

pub mod admin;
pub mod controller;
pub mod convert;
pub mod group;
pub mod identity;
pub mod node;
pub mod observe;
pub mod peer;
pub mod rpc;
pub mod status;
