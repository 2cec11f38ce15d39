//! The cluster controller's decisions, without I/O: which node a new volume goes to,
//! who owns an id from the nodes' answers, and one page of a listing merged from all
//! nodes.

use stowage_proto::csi::v1 as csi;
use tonic::Status;

use super::Held;
use crate::TOPOLOGY_KEY;

/// The node whose answers say it holds `what`; see [`super::Cluster::owner`].
pub(super) fn pick_owner(
    what: &str,
    answers: Vec<(String, Held)>,
) -> Result<Option<String>, Status> {
    let mut owners = Vec::new();
    let mut silent = Vec::new();
    for (node, held) in answers {
        match held {
            Held::Yes => owners.push(node),
            Held::No => {}
            Held::Unknown(status) => silent.push(format!("{node} ({})", status.message())),
        }
    }
    match owners.as_slice() {
        [one] => Ok(Some(one.clone())),
        [] if silent.is_empty() => Ok(None),
        [] => Err(Status::unavailable(format!(
            "{what} is on no node that answered; not answering: {}",
            silent.join(", ")
        ))),
        many => Err(Status::failed_precondition(format!(
            "{what} is held by more than one node ({}): a split brain, resolve it with \
             `vol` on those nodes",
            many.join(", ")
        ))),
    }
}

/// The nodes a volume with `requirement` may go to, best first: the preferred
/// segments in order (the first is the scheduler's pick under WaitForFirstConsumer),
/// then the requisite ones, each once; only configured nodes (`known`). Without a
/// requirement, every known node. INVALID_ARGUMENT for a segment without our key.
pub fn candidates(
    requirement: Option<&csi::TopologyRequirement>,
    known: &[String],
) -> Result<Vec<String>, Status> {
    let Some(req) = requirement else {
        return Ok(known.to_vec());
    };
    let mut nodes: Vec<String> = Vec::new();
    for t in req.preferred.iter().chain(&req.requisite) {
        let node = t.segments.get(TOPOLOGY_KEY).ok_or_else(|| {
            Status::invalid_argument(format!("a topology segment lacks {TOPOLOGY_KEY}"))
        })?;
        if !nodes.contains(node) {
            nodes.push(node.clone());
        }
    }
    if req.preferred.is_empty() && req.requisite.is_empty() {
        return Ok(known.to_vec());
    }
    Ok(nodes.into_iter().filter(|n| known.contains(n)).collect())
}

/// Where a volume goes: the node holding its source when it has one (that node must
/// be a candidate: RESOURCE_EXHAUSTED otherwise, so an external-provisioner
/// reschedules the claim rather than failing it for good, as it does on NOT_FOUND),
/// else the first candidate. RESOURCE_EXHAUSTED when no candidate is configured.
pub fn placement(candidates: &[String], source_owner: Option<&str>) -> Result<String, Status> {
    match source_owner {
        Some(owner) if candidates.iter().any(|c| c == owner) => Ok(owner.to_string()),
        Some(owner) => Err(Status::resource_exhausted(format!(
            "the volume's source is on node {owner}, which its topology requirement does \
             not allow ({}); a restore or clone is made on the source's node",
            candidates.join(", ")
        ))),
        None => candidates.first().cloned().ok_or_else(|| {
            Status::resource_exhausted(
                "no node of this cluster controller's --peer list is in the volume's topology",
            )
        }),
    }
}

/// One page of `entries` merged from all nodes, ordered by `key`: those after the
/// token's key, at most `max_entries` (0: all). Tokens are `after:<key>`; any other
/// is ABORTED, as CSI asks for a token the plugin did not issue.
pub fn page<T>(
    mut entries: Vec<T>,
    key: impl Fn(&T) -> String,
    starting_token: &str,
    max_entries: i32,
) -> Result<(Vec<T>, String), Status> {
    let limit = usize::try_from(max_entries)
        .map_err(|_| Status::invalid_argument("max_entries must not be negative"))?;
    entries.sort_by_key(&key);
    let after = if starting_token.is_empty() {
        None
    } else {
        Some(
            starting_token
                .strip_prefix(TOKEN_PREFIX)
                .ok_or_else(|| Status::aborted(format!("unknown token {starting_token:?}")))?
                .to_string(),
        )
    };
    let mut rest: Vec<T> = entries
        .into_iter()
        .filter(|e| after.as_ref().is_none_or(|a| key(e) > *a))
        .collect();
    if limit == 0 || rest.len() <= limit {
        return Ok((rest, String::new()));
    }
    rest.truncate(limit);
    let next = format!("{TOKEN_PREFIX}{}", key(&rest[limit - 1]));
    Ok((rest, next))
}

/// Prefix of the cluster controller's listing tokens.
const TOKEN_PREFIX: &str = "after:";

/// The topology's node, when it names one.
pub fn topology_node(t: &csi::Topology) -> Option<&str> {
    t.segments.get(TOPOLOGY_KEY).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn topo(node: &str) -> csi::Topology {
        csi::Topology {
            segments: HashMap::from([(TOPOLOGY_KEY.to_string(), node.to_string())]),
        }
    }

    fn known() -> Vec<String> {
        vec!["a".into(), "b".into(), "c".into()]
    }

    #[test]
    fn preferred_first_then_requisite_only_known_nodes() {
        let req = csi::TopologyRequirement {
            requisite: vec![topo("a"), topo("b"), topo("z")],
            preferred: vec![topo("b")],
        };
        assert_eq!(candidates(Some(&req), &known()).unwrap(), ["b", "a"]);
        assert_eq!(candidates(None, &known()).unwrap(), known());
        let bad = csi::TopologyRequirement {
            requisite: vec![csi::Topology::default()],
            preferred: vec![],
        };
        assert_eq!(
            candidates(Some(&bad), &known()).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn a_source_elsewhere_is_resource_exhausted_never_not_found() {
        let c = vec!["b".to_string()];
        assert_eq!(placement(&c, None).unwrap(), "b");
        assert_eq!(placement(&c, Some("b")).unwrap(), "b");
        let e = placement(&c, Some("a")).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.message().contains("node a"), "{}", e.message());
        assert_eq!(
            placement(&[], None).unwrap_err().code(),
            tonic::Code::ResourceExhausted
        );
    }

    #[test]
    fn owner_is_one_answer_silence_is_unavailable_two_is_split_brain() {
        let no = |n: &str| (n.to_string(), Held::No);
        let yes = |n: &str| (n.to_string(), Held::Yes);
        let down = |n: &str| (n.to_string(), Held::Unknown(Status::unavailable("down")));
        assert_eq!(
            pick_owner("v", vec![no("a"), yes("b")]).unwrap(),
            Some("b".into())
        );
        assert_eq!(pick_owner("v", vec![no("a"), no("b")]).unwrap(), None);
        // A node that holds it answers even while another is down.
        assert_eq!(
            pick_owner("v", vec![down("a"), yes("b")]).unwrap(),
            Some("b".into())
        );
        let e = pick_owner("v", vec![down("a"), no("b")]).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable);
        assert!(e.message().contains('a'));
        let e = pick_owner("v", vec![yes("a"), yes("b")]).unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    }

    #[test]
    fn pages_follow_the_key_and_refuse_foreign_tokens() {
        let all = vec![3, 1, 2, 5, 4];
        let key = |n: &i32| format!("{n}");
        let (p1, t1) = page(all.clone(), key, "", 2).unwrap();
        assert_eq!(p1, [1, 2]);
        let (p2, t2) = page(all.clone(), key, &t1, 2).unwrap();
        assert_eq!(p2, [3, 4]);
        let (p3, t3) = page(all.clone(), key, &t2, 2).unwrap();
        assert_eq!((p3, t3.as_str()), (vec![5], ""));
        let (whole, t) = page(all.clone(), key, "", 0).unwrap();
        assert_eq!((whole.len(), t.as_str()), (5, ""));
        assert_eq!(
            page(all.clone(), key, "bogus", 2).unwrap_err().code(),
            tonic::Code::Aborted
        );
        assert_eq!(
            page(all, key, "", -1).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
