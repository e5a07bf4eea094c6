//! The order in which the writer takes ready keys: fair among clusters,
//! and within a cluster fair among workspaces, so no cluster's (or
//! workspace's) backlog holds back another's writes.
//!
//! It is kube-apiserver's API Priority and Fairness without the shuffle
//! sharding: one queue per flow instead of a hashed handful, which costs a
//! map entry per cluster with a backlog and gives the exact bound. Each
//! cluster with ready keys has a flow; the flows take turns (round robin),
//! one key per turn. Inside a flow, its workspaces take turns the same way,
//! and each workspace's keys go oldest first. A key ready while clusters
//! A, B and C all have backlogs waits for at most one write of each of the
//! others per key ahead of it in its own flow.
//!
//! A key whose status carries several clusters' changes (the object is
//! placed on several) waits in each of their flows at once and is written
//! at the first turn of any of them; it then leaves the others. Every flow
//! holds a key at most once, so a flow is bounded by its cluster's objects
//! (`max_objects_per_cluster`) and all of them together by the store.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::store::{ClusterName, ObjectKey};

/// Ready keys, by cluster and workspace; see the module documentation.
#[derive(Debug, Default)]
pub(super) struct Flows {
    flows: HashMap<ClusterName, Flow>,
    /// Every cluster in `flows`, once each, in turn order. A flow emptied by
    /// [`Flows::remove`] stays until its turn comes.
    turns: VecDeque<ClusterName>,
    /// Orders keys inside a workspace's queue (oldest first).
    next_ticket: u64,
}

/// One cluster's ready keys.
#[derive(Debug, Default)]
struct Flow {
    /// Per workspace, keys by the ticket they became ready with.
    queues: HashMap<String, BTreeMap<u64, ObjectKey>>,
    /// Every workspace in `queues`, once each, in turn order (emptied ones
    /// stay until their turn, as with clusters).
    turns: VecDeque<String>,
    len: usize,
}

impl Flows {
    /// A new ticket: keys made ready with later tickets go after in every flow.
    pub fn ticket(&mut self) -> u64 {
        self.next_ticket += 1;
        self.next_ticket
    }

    /// Adds `key`, ready with `ticket`, to `cluster`'s flow.
    pub fn insert(&mut self, cluster: &str, ticket: u64, key: ObjectKey) {
        let flow = match self.flows.get_mut(cluster) {
            Some(flow) => flow,
            None => {
                self.turns.push_back(cluster.to_owned());
                self.flows.entry(cluster.to_owned()).or_default()
            }
        };
        let queue = match flow.queues.get_mut(&key.workspace) {
            Some(queue) => queue,
            None => {
                flow.turns.push_back(key.workspace.clone());
                flow.queues.entry(key.workspace.clone()).or_default()
            }
        };
        if queue.insert(ticket, key).is_none() {
            flow.len += 1;
        }
    }

    /// Removes the key of `workspace` ready with `ticket` from `cluster`'s
    /// flow (it was taken through another cluster's flow).
    pub fn remove(&mut self, cluster: &str, workspace: &str, ticket: u64) {
        if let Some(flow) = self.flows.get_mut(cluster)
            && let Some(queue) = flow.queues.get_mut(workspace)
            && queue.remove(&ticket).is_some()
        {
            flow.len -= 1;
        }
    }

    /// The next key in fair order, with the cluster whose turn it was and
    /// its ticket; it leaves that cluster's flow only.
    pub fn pop(&mut self) -> Option<(ClusterName, u64, ObjectKey)> {
        while let Some(cluster) = self.turns.pop_front() {
            let Some(flow) = self.flows.get_mut(&cluster) else {
                continue;
            };
            let Some((ticket, key)) = flow.pop() else {
                self.flows.remove(&cluster);
                continue;
            };
            if flow.len == 0 {
                self.flows.remove(&cluster);
            } else {
                self.turns.push_back(cluster.clone());
            }
            return Some((cluster, ticket, key));
        }
        None
    }

    /// Ready keys waiting in `cluster`'s flow.
    #[cfg(test)]
    pub fn len_of(&self, cluster: &str) -> usize {
        self.flows.get(cluster).map_or(0, |f| f.len)
    }
}

impl Flow {
    /// The oldest key of the workspace whose turn it is.
    fn pop(&mut self) -> Option<(u64, ObjectKey)> {
        while let Some(workspace) = self.turns.pop_front() {
            let Some(queue) = self.queues.get_mut(&workspace) else {
                continue;
            };
            let Some((ticket, key)) = queue.pop_first() else {
                self.queues.remove(&workspace);
                continue;
            };
            self.len -= 1;
            if queue.is_empty() {
                self.queues.remove(&workspace);
            } else {
                self.turns.push_back(workspace);
            }
            return Some((ticket, key));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::KeyParts;

    fn key(workspace: &str, name: &str) -> ObjectKey {
        ObjectKey::new(KeyParts {
            workspace: workspace.into(),
            group: String::new(),
            version: "v1".into(),
            resource: "configmaps".into(),
            kind: "ConfigMap".into(),
            namespace: Some("default".into()),
            name: name.into(),
        })
    }

    fn order(flows: &mut Flows) -> Vec<String> {
        std::iter::from_fn(|| flows.pop())
            .map(|(cluster, _, key)| format!("{cluster}/{}/{}", key.workspace, key.name))
            .collect()
    }

    #[test]
    fn clusters_take_turns_then_workspaces_oldest_first() {
        let mut flows = Flows::default();
        for name in ["a1", "a2", "a3"] {
            let t = flows.ticket();
            flows.insert("a", t, key("w1", name));
        }
        let t = flows.ticket();
        flows.insert("a", t, key("w2", "x"));
        let t = flows.ticket();
        flows.insert("b", t, key("w1", "b1"));
        assert_eq!(flows.len_of("a"), 4);
        assert_eq!(
            order(&mut flows),
            ["a/w1/a1", "b/w1/b1", "a/w2/x", "a/w1/a2", "a/w1/a3"]
        );
        assert!(flows.flows.is_empty() && flows.turns.is_empty());
    }

    #[test]
    fn a_key_in_two_flows_is_taken_once() {
        let mut flows = Flows::default();
        let shared = flows.ticket();
        flows.insert("a", shared, key("w", "shared"));
        flows.insert("b", shared, key("w", "shared"));
        let t = flows.ticket();
        flows.insert("a", t, key("w", "a-only"));
        let (cluster, ticket, k) = flows.pop().unwrap_or_else(|| panic!("a key is ready"));
        assert_eq!((cluster.as_str(), k.name.as_str()), ("a", "shared"));
        flows.remove("b", "w", ticket);
        assert_eq!(flows.len_of("b"), 0);
        assert_eq!(order(&mut flows), ["a/w/a-only"]);
    }
}
