//! The object store: every workspace's objects, the one resource-version
//! counter, the bounded per-resource event history that watches resume from,
//! and the fan-out of events to watchers.
//!
//! One mutex guards everything; it is never held across an await. Writers
//! never wait for watchers: each watcher has a bounded channel and is dropped
//! (its watch ends, as kube-apiserver ends slow watchers) when it is full.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::bootstrap;
use super::object::{self, meta_str};
use super::resources::{self, CRD_GROUP, CRD_PLURAL, ResourceDef, ResourceKey};
use super::selector::{FieldSelector, LabelSelector};
use super::status::ApiError;

/// The kind of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// A change to one object, as recorded in the history.
#[derive(Debug)]
pub(crate) struct Event {
    pub rv: u64,
    pub kind: EventType,
    /// The new state (for a delete: the last state, with the delete's resourceVersion).
    pub object: Arc<Value>,
    /// The state before a modification, to turn it into ADDED/DELETED for
    /// watchers whose selector it enters or leaves.
    pub prev: Option<Arc<Value>>,
    json: OnceLock<Bytes>,
}

impl Event {
    fn new(rv: u64, kind: EventType, object: Arc<Value>, prev: Option<Arc<Value>>) -> Arc<Event> {
        Arc::new(Event {
            rv,
            kind,
            object,
            prev,
            json: OnceLock::new(),
        })
    }

    /// The object serialised once, shared by every watcher (`order` is
    /// the resource's, the same for every watcher of it).
    pub fn object_json(&self, order: object::KeyOrder) -> &Bytes {
        self.json
            .get_or_init(|| Bytes::from(object::to_json(&self.object, order)))
    }
}

/// An event as one watcher sees it (the type depends on its selector).
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub kind: EventType,
    pub event: Arc<Event>,
}

/// Which objects a list or watch is about.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn matches(&self, object: &Value) -> bool {
        if let Some(ns) = &self.namespace
            && meta_str(object, "namespace").unwrap_or_default() != ns
        {
            return false;
        }
        self.labels.matches(object) && self.fields.matches(object)
    }

    /// How an event looks to a watcher with this filter, if it sees it at all.
    fn view(&self, event: &Event) -> Option<EventType> {
        let now = self.matches(&event.object);
        match event.kind {
            EventType::Added | EventType::Deleted => now.then_some(event.kind),
            EventType::Modified => {
                let before = event.prev.as_deref().is_some_and(|p| self.matches(p));
                match (before, now) {
                    (true, true) => Some(EventType::Modified),
                    (false, true) => Some(EventType::Added),
                    (true, false) => Some(EventType::Deleted),
                    (false, false) => None,
                }
            }
        }
    }
}

/// Which workspaces a list or watch covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    /// One workspace ("" is the physical cluster).
    Workspace(String),
    /// Every KCP workspace (kcp's `/clusters/*`), never the physical cluster.
    AllWorkspaces,
}

/// Where a list page ends: the last object returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListKey {
    pub workspace: String,
    pub namespace: String,
    pub name: String,
}

/// Where a new watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WatchStart {
    /// Synthetic ADDED events for the current state, then live events.
    CurrentState,
    /// Only events from now on.
    Now,
    /// Every event after this resource version (410 Expired if it is no longer kept).
    After(u64),
}

/// What a writer decided, given the current object.
#[derive(Debug)]
pub(crate) enum Decision {
    /// Store this object (create or replace); it gets a new resourceVersion.
    Put(Value),
    /// Remove the object; the value is its last state.
    Remove(Value),
    /// Change nothing; answer with the current object.
    Keep,
}

/// The result of a write.
#[derive(Debug)]
pub(crate) struct Written {
    pub object: Arc<Value>,
    /// The object is gone (or, in a dry run, would be).
    pub removed: bool,
}

/// How a write names its object.
#[derive(Debug, Clone)]
pub(crate) enum NameChoice {
    Exact(String),
    /// `metadata.generateName`: the prefix plus a random unused suffix.
    Generate(String),
}

/// Read-only access to a workspace while a write decides.
#[derive(Debug)]
pub(crate) struct SpaceView<'a> {
    space: &'a Space,
}

impl SpaceView<'_> {
    pub fn namespace(&self, name: &str) -> Option<&Arc<Value>> {
        self.space
            .collections
            .get(&namespaces_key())
            .and_then(|c| c.objects.get(&(String::new(), name.to_string())))
    }
}

/// A registered watcher: initial events to send first, then live ones.
#[derive(Debug)]
pub(crate) struct Subscription {
    pub initial: Vec<Delivery>,
    pub live: mpsc::Receiver<Delivery>,
    /// The store's resourceVersion when the watch started.
    pub start_rv: u64,
    registration: Registration,
}

/// Removes the watcher from its collection when the watch ends.
#[derive(Debug)]
struct Registration {
    inner: Arc<Mutex<Inner>>,
    scope: Scope,
    key: ResourceKey,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut inner = lock(&self.inner);
        let watchers = match &self.scope {
            Scope::Workspace(ws) => inner
                .spaces
                .get_mut(ws)
                .and_then(|s| s.collections.get_mut(&self.key))
                .map(|c| &mut c.watchers),
            Scope::AllWorkspaces => inner.wildcard.get_mut(&self.key),
        };
        if let Some(watchers) = watchers {
            watchers.retain(|w| w.id != self.id);
        }
    }
}

impl Subscription {
    /// The current resourceVersion of the whole store (for bookmarks).
    pub fn store_rv(&self) -> u64 {
        lock(&self.registration.inner).rv
    }
}

/// One page of a list.
#[derive(Debug)]
pub(crate) struct ListPage {
    pub items: Vec<Arc<Value>>,
    pub rv: u64,
    /// The key to continue after, when more items match.
    pub next: Option<ListKey>,
    pub remaining: usize,
}

#[derive(Debug)]
struct WatcherSlot {
    id: u64,
    filter: Arc<Filter>,
    tx: mpsc::Sender<Delivery>,
}

#[derive(Debug, Default)]
struct Collection {
    objects: BTreeMap<(String, String), Arc<Value>>,
    history: VecDeque<Arc<Event>>,
    /// kube's `oldest - 1`: a watch from below this is 410 Expired.
    floor: u64,
    watchers: Vec<WatcherSlot>,
}

impl Collection {
    /// Records an event and hands it to every interested watcher, dropping
    /// watchers that cannot keep up.
    fn publish(&mut self, event: Arc<Event>, capacity: usize) {
        self.history.push_back(event.clone());
        while self.history.len() > capacity {
            if let Some(old) = self.history.pop_front() {
                self.floor = self
                    .history
                    .front()
                    .map_or(old.rv, |e| e.rv.saturating_sub(1));
            }
        }
        fan_out(&mut self.watchers, &event);
    }
}

/// Hands an event to every watcher whose filter sees it, dropping watchers
/// that cannot keep up (their watch ends) or are gone.
fn fan_out(watchers: &mut Vec<WatcherSlot>, event: &Arc<Event>) {
    watchers.retain(|w| match w.filter.view(event) {
        None => !w.tx.is_closed(),
        Some(kind) => match w.tx.try_send(Delivery {
            kind,
            event: event.clone(),
        }) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::info!(watcher = w.id, "ending a watch that fell too far behind");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        },
    });
}

impl Collection {
    /// The objects as they were at resourceVersion `at`, rebuilt by undoing
    /// later events; `None` when the history no longer reaches back that far.
    fn snapshot_at(&self, at: u64) -> Option<BTreeMap<(String, String), Arc<Value>>> {
        if at < self.floor {
            return None;
        }
        let mut objects = self.objects.clone();
        for event in self.history.iter().rev().take_while(|e| e.rv > at) {
            let key = (
                meta_str(&event.object, "namespace")
                    .unwrap_or_default()
                    .to_string(),
                meta_str(&event.object, "name")
                    .unwrap_or_default()
                    .to_string(),
            );
            match (&event.kind, &event.prev) {
                (EventType::Added, _) => {
                    objects.remove(&key);
                }
                (EventType::Modified | EventType::Deleted, Some(prev)) => {
                    objects.insert(key, prev.clone());
                }
                (_, None) => {}
            }
        }
        Some(objects)
    }
}

#[derive(Debug, Default)]
struct Space {
    custom: HashMap<ResourceKey, Arc<ResourceDef>>,
    collections: HashMap<ResourceKey, Collection>,
}

#[derive(Debug)]
struct Inner {
    rv: u64,
    next_watcher_id: u64,
    spaces: HashMap<String, Space>,
    /// Watchers of `/clusters/*` (kcp's wildcard), by resource: they see
    /// the events of every workspace, present and future.
    wildcard: HashMap<ResourceKey, Vec<WatcherSlot>>,
    /// The port the `default/kubernetes` Service points at.
    apiserver_port: u16,
}

impl Inner {
    /// A workspace's space, created with its initial namespaces on first
    /// use, and the journal its writes go through.
    fn open<'a>(&'a mut self, workspace: &'a str, capacity: usize) -> (&'a mut Space, Journal<'a>) {
        let Inner {
            rv,
            spaces,
            wildcard,
            apiserver_port,
            ..
        } = self;
        let mut journal = Journal {
            rv,
            capacity,
            // The physical cluster ("") is not a workspace: `/clusters/*` never sees it.
            wildcard: (!workspace.is_empty()).then_some(wildcard),
            workspace,
        };
        let space = spaces.entry(workspace.to_string()).or_insert_with(|| {
            let mut space = Space::default();
            let initial: &[&str] = if workspace.is_empty() {
                &["default", "kube-system", "kube-public", "kube-node-lease"]
            } else {
                &["default"]
            };
            for name in initial {
                journal.put(
                    &mut space,
                    &namespaces_key(),
                    (String::new(), (*name).to_string()),
                    json!({
                        "apiVersion": "v1",
                        "kind": "Namespace",
                        "metadata": {
                            "name": name,
                            "uid": uuid::Uuid::new_v4().to_string(),
                            "creationTimestamp": object::now_rfc3339(),
                            "labels": { "kubernetes.io/metadata.name": name },
                        },
                        "spec": { "finalizers": ["kubernetes"] },
                        "status": { "phase": "Active" },
                    }),
                    None,
                );
                journal.ensure_default_service_account(&mut space, name);
            }
            if workspace.is_empty() {
                let service = bootstrap::kubernetes_service(*apiserver_port);
                let key = (String::new(), "services".to_string());
                let obj_key = ("default".to_string(), "kubernetes".to_string());
                journal.put(&mut space, &key, obj_key, service, None);
            }
            space
        });
        (space, journal)
    }

    /// The KCP workspaces (not the physical cluster), in name order.
    fn workspaces(&self) -> Vec<(&str, &Space)> {
        let mut all: Vec<(&str, &Space)> = self
            .spaces
            .iter()
            .filter(|(ws, _)| !ws.is_empty())
            .map(|(ws, space)| (ws.as_str(), space))
            .collect();
        all.sort_by(|a, b| a.0.cmp(b.0));
        all
    }

    /// The existing spaces a scope covers, in workspace name order.
    fn in_scope(&self, scope: &Scope) -> Vec<(&str, &Space)> {
        match scope {
            Scope::Workspace(ws) => self
                .spaces
                .get_key_value(ws)
                .map(|(ws, space)| (ws.as_str(), space))
                .into_iter()
                .collect(),
            Scope::AllWorkspaces => self.workspaces(),
        }
    }
}

/// Where one workspace's writes go: the resource-version counter (one for
/// the whole server, so versions compare across workspaces), the history
/// bound, and, for KCP workspaces, the wildcard watchers.
struct Journal<'a> {
    rv: &'a mut u64,
    capacity: usize,
    wildcard: Option<&'a mut HashMap<ResourceKey, Vec<WatcherSlot>>>,
    workspace: &'a str,
}

impl Journal<'_> {
    fn next_rv(&mut self) -> u64 {
        *self.rv += 1;
        *self.rv
    }

    /// Records an event in its collection and hands it to the watchers of
    /// the workspace and of `/clusters/*`.
    fn publish(&mut self, collection: &mut Collection, key: &ResourceKey, event: Arc<Event>) {
        if let Some(watchers) = self.wildcard.as_deref_mut().and_then(|w| w.get_mut(key)) {
            fan_out(watchers, &event);
        }
        collection.publish(event, self.capacity);
    }

    /// Stores an object (created or replaced) under a new resourceVersion,
    /// with the workspace annotation, and publishes the event.
    fn put(
        &mut self,
        space: &mut Space,
        key: &ResourceKey,
        obj_key: (String, String),
        mut value: Value,
        current: Option<Arc<Value>>,
    ) -> Arc<Value> {
        let rv = self.next_rv();
        object::set_meta(&mut value, "resourceVersion", Some(json!(rv.to_string())));
        annotate_workspace(&mut value, self.workspace);
        let value = Arc::new(value);
        let kind = if current.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        let collection = space.collections.entry(key.clone()).or_default();
        collection.objects.insert(obj_key, value.clone());
        self.publish(
            collection,
            key,
            Event::new(rv, kind, value.clone(), current),
        );
        value
    }

    /// Creates the `default` ServiceAccount of `namespace` unless it exists,
    /// as kube-controller-manager does for every namespace.
    fn ensure_default_service_account(&mut self, space: &mut Space, namespace: &str) {
        let key = service_accounts_key();
        let obj_key = (
            namespace.to_string(),
            bootstrap::DEFAULT_SERVICE_ACCOUNT.to_string(),
        );
        let exists = space
            .collections
            .get(&key)
            .is_some_and(|c| c.objects.contains_key(&obj_key));
        if !exists {
            let account = bootstrap::default_service_account(namespace);
            self.put(space, &key, obj_key, account, None);
        }
    }
}

/// kcp's annotation naming the workspace (logical cluster) an object lives in.
pub(crate) const CLUSTER_ANNOTATION: &str = "kcp.io/cluster";

/// Sets `kcp.io/cluster` on an object stored in a workspace, as kcp's
/// storage does on every object it returns; the physical cluster has none.
/// Returns whether the object changed.
fn annotate_workspace(object: &mut Value, workspace: &str) -> bool {
    if workspace.is_empty() {
        return false;
    }
    let current = object
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(CLUSTER_ANNOTATION))
        .and_then(Value::as_str);
    if current == Some(workspace) {
        return false;
    }
    let meta = object::metadata_mut(object);
    let annotations = meta
        .entry("annotations")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    if !annotations.is_object() {
        *annotations = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(annotations) = annotations {
        annotations.insert(CLUSTER_ANNOTATION.to_string(), json!(workspace));
    }
    true
}

/// All objects of one server.
#[derive(Debug)]
pub(crate) struct Store {
    inner: Arc<Mutex<Inner>>,
    builtins: Vec<Arc<ResourceDef>>,
    history: usize,
    watcher_buffer: usize,
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // Nothing under the lock panics; if something ever did, the data is still
    // consistent per write (each write is applied in one step), so keep serving.
    inner.lock().unwrap_or_else(PoisonError::into_inner)
}

fn namespaces_key() -> ResourceKey {
    (String::new(), "namespaces".to_string())
}

fn service_accounts_key() -> ResourceKey {
    (String::new(), "serviceaccounts".to_string())
}

fn crd_key() -> ResourceKey {
    (CRD_GROUP.to_string(), CRD_PLURAL.to_string())
}

impl Store {
    pub fn new(history: usize, watcher_buffer: usize) -> Store {
        Store {
            inner: Arc::new(Mutex::new(Inner {
                rv: 0,
                next_watcher_id: 0,
                spaces: HashMap::new(),
                wildcard: HashMap::new(),
                apiserver_port: 6443,
            })),
            builtins: resources::builtins(),
            history,
            watcher_buffer: watcher_buffer.max(1),
        }
    }

    /// Sets the port the `default/kubernetes` Service points at (before the
    /// physical cluster's space is first used).
    pub fn set_apiserver_port(&self, port: u16) {
        lock(&self.inner).apiserver_port = port;
    }

    /// Creates a workspace ("" is the cluster itself) with its initial
    /// namespaces, if it does not exist yet.
    pub fn ensure_space(&self, workspace: &str) {
        lock(&self.inner).open(workspace, self.history);
    }
}

impl Store {
    /// The resource served at group/version/plural in a workspace.
    pub fn resolve(
        &self,
        workspace: &str,
        group: &str,
        version: &str,
        plural: &str,
    ) -> Option<Arc<ResourceDef>> {
        let mut inner = lock(&self.inner);
        let (space, _) = inner.open(workspace, self.history);
        let key = (group.to_string(), plural.to_string());
        let def = self
            .builtins
            .iter()
            .find(|d| d.group == group && d.plural == plural)
            .or_else(|| space.custom.get(&key))?;
        def.version(version).is_some().then(|| def.clone())
    }

    /// The resource served at group/version/plural in any workspace (for
    /// `/clusters/*`): a built-in, or the first workspace's CRD, by
    /// workspace name, that serves the version.
    pub fn resolve_in_any_workspace(
        &self,
        group: &str,
        version: &str,
        plural: &str,
    ) -> Option<Arc<ResourceDef>> {
        let inner = lock(&self.inner);
        let key = (group.to_string(), plural.to_string());
        self.builtins
            .iter()
            .find(|d| d.group == group && d.plural == plural)
            .into_iter()
            .chain(
                inner
                    .workspaces()
                    .into_iter()
                    .filter_map(|(_, space)| space.custom.get(&key)),
            )
            .find(|def| def.version(version).is_some())
            .cloned()
    }

    /// Every resource a workspace serves, built-ins first.
    pub fn resources(&self, workspace: &str) -> Vec<Arc<ResourceDef>> {
        let mut inner = lock(&self.inner);
        let (space, _) = inner.open(workspace, self.history);
        let mut custom: Vec<Arc<ResourceDef>> = space.custom.values().cloned().collect();
        custom.sort_by(|a, b| (&a.group, &a.plural).cmp(&(&b.group, &b.plural)));
        self.builtins.iter().cloned().chain(custom).collect()
    }

    /// Every resource some workspace serves (discovery of `/clusters/*`),
    /// built-ins first; a CRD defined in several workspaces is listed once.
    pub fn resources_in_all_workspaces(&self) -> Vec<Arc<ResourceDef>> {
        let inner = lock(&self.inner);
        let mut custom: BTreeMap<ResourceKey, Arc<ResourceDef>> = BTreeMap::new();
        for (_, space) in inner.workspaces() {
            for (key, def) in &space.custom {
                custom.entry(key.clone()).or_insert_with(|| def.clone());
            }
        }
        self.builtins
            .iter()
            .cloned()
            .chain(custom.into_values())
            .collect()
    }

    /// The current resourceVersion of the whole store.
    pub fn current_rv(&self) -> u64 {
        lock(&self.inner).rv
    }

    pub fn get(
        &self,
        workspace: &str,
        key: &ResourceKey,
        namespace: &str,
        name: &str,
    ) -> Option<Arc<Value>> {
        let mut inner = lock(&self.inner);
        let (space, _) = inner.open(workspace, self.history);
        space
            .collections
            .get(key)?
            .objects
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Up to `limit` matching objects after `after`, in (workspace,
    /// namespace, name) order, as they were at resourceVersion `at` (a
    /// continued list is one consistent snapshot, as etcd serves it) or now.
    /// A snapshot older than the kept history is 410 Expired, as a compacted
    /// continue token is.
    pub fn list(
        &self,
        scope: &Scope,
        key: &ResourceKey,
        filter: &Filter,
        after: Option<ListKey>,
        limit: Option<usize>,
        at: Option<u64>,
    ) -> Result<ListPage, ApiError> {
        let mut guard = lock(&self.inner);
        if let Scope::Workspace(ws) = scope {
            guard.open(ws, self.history);
        }
        let inner = &*guard;
        let current = inner.rv;
        let mut page = ListPage {
            items: Vec::new(),
            rv: at.unwrap_or(current),
            next: None,
            remaining: 0,
        };
        let mut last_key = None;
        for (ws, space) in inner.in_scope(scope) {
            let lower = match (&after, scope) {
                (None, _) => Bound::Unbounded,
                (Some(a), Scope::Workspace(_)) => {
                    Bound::Excluded((a.namespace.clone(), a.name.clone()))
                }
                (Some(a), Scope::AllWorkspaces) => match ws.cmp(a.workspace.as_str()) {
                    std::cmp::Ordering::Less => continue,
                    std::cmp::Ordering::Equal => {
                        Bound::Excluded((a.namespace.clone(), a.name.clone()))
                    }
                    std::cmp::Ordering::Greater => Bound::Unbounded,
                },
            };
            let Some(collection) = space.collections.get(key) else {
                continue;
            };
            let snapshot;
            let objects = match at {
                Some(at) if at < current => {
                    snapshot = collection.snapshot_at(at).ok_or_else(|| {
                        ApiError::expired(
                            "The provided continue parameter is too old to display a consistent list result. \
                             You can start a new list without the continue parameter.",
                        )
                    })?;
                    &snapshot
                }
                _ => &collection.objects,
            };
            for (k, obj) in objects.range((lower, Bound::Unbounded)) {
                if !filter.matches(obj) {
                    continue;
                }
                if limit.is_some_and(|l| page.items.len() >= l) {
                    page.remaining += 1;
                    continue;
                }
                page.items.push(obj.clone());
                last_key = Some((ws, k.clone()));
            }
        }
        if page.remaining > 0 {
            page.next = last_key.map(|(ws, (namespace, name))| ListKey {
                workspace: ws.to_string(),
                namespace,
                name,
            });
        }
        Ok(page)
    }

    /// Decides and applies one write atomically. `decide` sees the workspace,
    /// the chosen name and the current object; with `dry_run` nothing is
    /// stored, no resourceVersion is used and no event is sent.
    pub fn write<F>(
        &self,
        workspace: &str,
        key: &ResourceKey,
        namespace: &str,
        name: NameChoice,
        dry_run: bool,
        decide: F,
    ) -> Result<Written, ApiError>
    where
        F: FnOnce(&SpaceView<'_>, &str, Option<&Arc<Value>>) -> Result<Decision, ApiError>,
    {
        let mut guard = lock(&self.inner);
        let (space, mut journal) = guard.open(workspace, self.history);
        let existing = space.collections.get(key);
        let name = match name {
            NameChoice::Exact(n) => n,
            NameChoice::Generate(prefix) => loop {
                let candidate = format!("{prefix}{}", object::random_suffix());
                let taken = existing.is_some_and(|c| {
                    c.objects
                        .contains_key(&(namespace.to_string(), candidate.clone()))
                });
                if !taken {
                    break candidate;
                }
            },
        };
        let obj_key = (namespace.to_string(), name.clone());
        let current = existing.and_then(|c| c.objects.get(&obj_key)).cloned();
        let decision = match decide(&SpaceView { space }, &name, current.as_ref())? {
            Decision::Put(mut v) => {
                // Dropping the workspace annotation is no change: kcp sets it
                // anyway. (Other no-op writes are already Keep.)
                if annotate_workspace(&mut v, workspace) && current.as_deref() == Some(&v) {
                    Decision::Keep
                } else {
                    Decision::Put(v)
                }
            }
            Decision::Remove(mut v) => {
                annotate_workspace(&mut v, workspace);
                Decision::Remove(v)
            }
            Decision::Keep => Decision::Keep,
        };
        let unchanged = || current.clone().unwrap_or_else(|| Arc::new(Value::Null));
        if dry_run {
            let removed = matches!(decision, Decision::Remove(_));
            return Ok(Written {
                object: match decision {
                    Decision::Put(v) | Decision::Remove(v) => Arc::new(v),
                    Decision::Keep => unchanged(),
                },
                removed,
            });
        }
        match decision {
            Decision::Keep => Ok(Written {
                object: unchanged(),
                removed: false,
            }),
            Decision::Put(value) => {
                let created = current.is_none();
                let value = journal.put(space, key, obj_key, value, current.clone());
                if *key == crd_key() {
                    register_crd(space, &value);
                }
                if *key == namespaces_key() && created {
                    journal.ensure_default_service_account(space, &name);
                }
                Ok(Written {
                    object: value,
                    removed: false,
                })
            }
            Decision::Remove(last) => {
                let last = Arc::new(last);
                remove_object(&mut journal, space, key, &obj_key, last.clone());
                if *key == crd_key() {
                    unregister_crd(&mut journal, space, &last);
                }
                if *key == namespaces_key() {
                    empty_namespace(&mut journal, space, &name);
                }
                // The serviceaccounts controller puts a deleted default account back.
                let namespace_active = SpaceView { space: &*space }
                    .namespace(namespace)
                    .is_some_and(|ns| ns.pointer("/metadata/deletionTimestamp").is_none());
                if *key == service_accounts_key()
                    && name == bootstrap::DEFAULT_SERVICE_ACCOUNT
                    && namespace_active
                {
                    journal.ensure_default_service_account(space, namespace);
                }
                Ok(Written {
                    object: last,
                    removed: true,
                })
            }
        }
    }

    /// Registers a watcher and returns its initial events, atomically with
    /// respect to writes (nothing is missed or sent twice). Across all
    /// workspaces, events are merged in resourceVersion order (one counter
    /// numbers every workspace's writes) and a resume expires when any
    /// workspace's history no longer reaches back.
    pub fn watch(
        &self,
        scope: &Scope,
        key: &ResourceKey,
        filter: Filter,
        start: WatchStart,
    ) -> Result<Subscription, ApiError> {
        let mut guard = lock(&self.inner);
        if let Scope::Workspace(ws) = scope {
            let (space, _) = guard.open(ws, self.history);
            space.collections.entry(key.clone()).or_default();
        }
        let inner = &mut *guard;
        inner.next_watcher_id += 1;
        let id = inner.next_watcher_id;
        let rv = inner.rv;
        let collections: Vec<&Collection> = inner
            .in_scope(scope)
            .into_iter()
            .filter_map(|(_, space)| space.collections.get(key))
            .collect();
        let initial = match start {
            WatchStart::Now => Vec::new(),
            WatchStart::CurrentState => collections
                .iter()
                .flat_map(|c| c.objects.values())
                .filter(|o| filter.matches(o))
                .map(|o| Delivery {
                    kind: EventType::Added,
                    event: Event::new(rv, EventType::Added, o.clone(), None),
                })
                .collect(),
            WatchStart::After(since) => {
                let floor = collections.iter().map(|c| c.floor).max().unwrap_or(0);
                if since < floor {
                    return Err(ApiError::expired(format!(
                        "too old resource version: {since} ({floor})"
                    )));
                }
                let mut deliveries: Vec<Delivery> = collections
                    .iter()
                    .flat_map(|c| c.history.iter().filter(|e| e.rv > since))
                    .filter_map(|e| {
                        filter.view(e).map(|kind| Delivery {
                            kind,
                            event: e.clone(),
                        })
                    })
                    .collect();
                deliveries.sort_by_key(|d| d.event.rv);
                deliveries
            }
        };
        let (tx, live) = mpsc::channel(self.watcher_buffer);
        let slot = WatcherSlot {
            id,
            filter: Arc::new(filter),
            tx,
        };
        match scope {
            Scope::Workspace(ws) => inner
                .spaces
                .entry(ws.clone())
                .or_default()
                .collections
                .entry(key.clone())
                .or_default()
                .watchers
                .push(slot),
            Scope::AllWorkspaces => inner.wildcard.entry(key.clone()).or_default().push(slot),
        }
        Ok(Subscription {
            initial,
            live,
            start_rv: rv,
            registration: Registration {
                inner: self.inner.clone(),
                scope: scope.clone(),
                key: key.clone(),
                id,
            },
        })
    }

    /// Ends every watch (server shutdown).
    pub fn end_all_watches(&self) {
        let mut inner = lock(&self.inner);
        for space in inner.spaces.values_mut() {
            for c in space.collections.values_mut() {
                c.watchers.clear();
            }
        }
        inner.wildcard.clear();
    }
}

/// Removes one object with a DELETED event carrying the delete's resourceVersion.
fn remove_object(
    journal: &mut Journal<'_>,
    space: &mut Space,
    key: &ResourceKey,
    obj_key: &(String, String),
    last: Arc<Value>,
) {
    let Some(collection) = space.collections.get_mut(key) else {
        return;
    };
    let Some(stored) = collection.objects.remove(obj_key) else {
        return;
    };
    let rv = journal.next_rv();
    let mut tombstone = (*last).clone();
    object::set_meta(
        &mut tombstone,
        "resourceVersion",
        Some(json!(rv.to_string())),
    );
    annotate_workspace(&mut tombstone, journal.workspace);
    journal.publish(
        collection,
        key,
        Event::new(rv, EventType::Deleted, Arc::new(tombstone), Some(stored)),
    );
}

/// Makes a CRD's resource servable (or updates it).
fn register_crd(space: &mut Space, crd: &Value) {
    match ResourceDef::from_crd(crd) {
        Ok(def) => {
            space.custom.insert(def.key(), Arc::new(def));
        }
        Err(reason) => {
            tracing::warn!(crd = meta_str(crd, "name").unwrap_or_default(), %reason, "CRD defines no resource");
        }
    }
}

/// Removes a CRD's resource: its objects are deleted (with events) and the
/// workspace's watches of it end. Its history stays, so a watch that
/// resumes from before the removal still sees the deletions.
fn unregister_crd(journal: &mut Journal<'_>, space: &mut Space, crd: &Value) {
    let Ok(def) = ResourceDef::from_crd(crd) else {
        return;
    };
    let key = def.key();
    space.custom.remove(&key);
    let victims: Vec<((String, String), Arc<Value>)> = space
        .collections
        .get(&key)
        .map(|c| {
            c.objects
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    for (k, last) in victims {
        remove_object(journal, space, &key, &k, last);
    }
    if let Some(collection) = space.collections.get_mut(&key) {
        collection.watchers.clear();
    }
}

/// Deletes everything in a namespace that is being removed.
fn empty_namespace(journal: &mut Journal<'_>, space: &mut Space, namespace: &str) {
    let keys: Vec<ResourceKey> = space.collections.keys().cloned().collect();
    for key in keys {
        let victims: Vec<((String, String), Arc<Value>)> = space
            .collections
            .get(&key)
            .map(|c| {
                c.objects
                    .iter()
                    .filter(|((ns, _), _)| ns == namespace)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        for (k, last) in victims {
            remove_object(journal, space, &key, &k, last);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn physical() -> Scope {
        Scope::Workspace(String::new())
    }

    fn key() -> ResourceKey {
        ("".into(), "configmaps".into())
    }

    fn put(store: &Store, name: &str, data: &str) -> Arc<Value> {
        let obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}, "data": {"k": data}});
        store
            .write(
                "",
                &key(),
                "default",
                NameChoice::Exact(name.into()),
                false,
                |_, _, _| Ok(Decision::Put(obj)),
            )
            .map(|w| w.object)
            .unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn rv_of(v: &Value) -> u64 {
        meta_str(v, "resourceVersion")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn resource_versions_increase_across_workspaces() {
        let store = Store::new(100, 10);
        let a = rv_of(&put(&store, "a", "1"));
        store.ensure_space("root:x");
        let b = rv_of(&put(&store, "b", "1"));
        assert!(
            b > a + 1,
            "creating a workspace uses resource versions for its namespaces"
        );
    }

    #[test]
    fn watch_resumes_from_history_and_expires_beyond_it() {
        let store = Store::new(3, 100);
        let first = rv_of(&put(&store, "a", "1"));
        for i in 0..5 {
            put(&store, "a", &i.to_string());
        }
        let err = store
            .watch(
                &physical(),
                &key(),
                Filter::default(),
                WatchStart::After(first),
            )
            .err()
            .unwrap_or_else(|| panic!("expected 410"));
        assert_eq!((err.code, err.reason), (410, "Expired"));
        assert!(
            err.message
                .starts_with(&format!("too old resource version: {first} ("))
        );
        let now = store.current_rv();
        let sub = store
            .watch(
                &physical(),
                &key(),
                Filter::default(),
                WatchStart::After(now - 2),
            )
            .unwrap_or_else(|e| panic!("{e:?}"));
        let rvs: Vec<u64> = sub.initial.iter().map(|d| d.event.rv).collect();
        assert_eq!(rvs, [now - 1, now]);
    }

    #[test]
    fn slow_watchers_are_dropped_without_blocking_writers() {
        let store = Store::new(100, 2);
        let mut sub = store
            .watch(&physical(), &key(), Filter::default(), WatchStart::Now)
            .unwrap_or_else(|e| panic!("{e:?}"));
        for i in 0..5 {
            put(&store, "a", &i.to_string());
        }
        let mut received = 0;
        while sub.live.try_recv().is_ok() {
            received += 1;
        }
        assert_eq!(received, 2);
        assert!(sub.live.is_closed());
    }

    #[test]
    fn selector_transitions_become_added_and_deleted() {
        let store = Store::new(100, 100);
        let filter = Filter {
            labels: LabelSelector::parse("app=web").unwrap_or_default(),
            ..Filter::default()
        };
        let mut sub = store
            .watch(&physical(), &key(), filter, WatchStart::Now)
            .unwrap_or_else(|e| panic!("{e:?}"));
        let write = |labels: Value| {
            let obj = json!({"metadata": {"name": "a", "namespace": "default", "labels": labels}});
            store
                .write(
                    "",
                    &key(),
                    "default",
                    NameChoice::Exact("a".into()),
                    false,
                    |_, _, _| Ok(Decision::Put(obj)),
                )
                .map(|_| ())
                .unwrap_or_else(|e| panic!("{e:?}"));
        };
        write(json!({"app": "db"}));
        write(json!({"app": "web"}));
        write(json!({"app": "web", "x": "y"}));
        write(json!({"app": "db"}));
        let mut kinds = Vec::new();
        while let Ok(d) = sub.live.try_recv() {
            kinds.push(d.kind);
        }
        assert_eq!(
            kinds,
            [EventType::Added, EventType::Modified, EventType::Deleted]
        );
    }

    #[test]
    fn dry_run_stores_nothing() {
        let store = Store::new(100, 100);
        store.ensure_space("");
        let before = store.current_rv();
        let obj = json!({"metadata": {"name": "a", "namespace": "default"}});
        let w = store
            .write(
                "",
                &key(),
                "default",
                NameChoice::Exact("a".into()),
                true,
                |_, _, _| Ok(Decision::Put(obj)),
            )
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(w.object.is_object());
        assert_eq!(store.current_rv(), before);
        assert!(store.get("", &key(), "default", "a").is_none());
    }

    #[test]
    fn wildcard_watch_sees_every_workspace_but_not_the_physical_cluster() {
        let store = Store::new(100, 100);
        store.ensure_space("root:a");
        let mut sub = store
            .watch(
                &Scope::AllWorkspaces,
                &key(),
                Filter::default(),
                WatchStart::Now,
            )
            .unwrap_or_else(|e| panic!("{e:?}"));
        let write = |ws: &str, name: &str| {
            let obj = json!({"metadata": {"name": name, "namespace": "default"}});
            store
                .write(
                    ws,
                    &key(),
                    "default",
                    NameChoice::Exact(name.into()),
                    false,
                    |_, _, _| Ok(Decision::Put(obj)),
                )
                .map(|w| w.object)
                .unwrap_or_else(|e| panic!("{e:?}"))
        };
        write("", "physical");
        write("root:a", "a");
        // A workspace created after the watch started is seen too.
        let b = write("root:b", "b");
        assert_eq!(b["metadata"]["annotations"][CLUSTER_ANNOTATION], "root:b");
        let mut seen = Vec::new();
        while let Ok(d) = sub.live.try_recv() {
            seen.push(
                meta_str(&d.event.object, "name")
                    .unwrap_or_default()
                    .to_string(),
            );
        }
        assert_eq!(seen, ["a", "b"]);
        let physical = store.get("", &key(), "default", "physical");
        assert!(physical.is_some_and(|o| o.pointer("/metadata/annotations").is_none()));
    }

    #[test]
    fn namespaces_get_a_default_service_account_and_the_cluster_its_service() {
        let store = Store::new(100, 100);
        store.ensure_space("");
        store.ensure_space("root:a");
        let accounts = service_accounts_key();
        let services = (String::new(), "services".to_string());
        for ws in ["", "root:a"] {
            assert!(store.get(ws, &accounts, "default", "default").is_some());
        }
        assert!(store.get("", &services, "default", "kubernetes").is_some());
        assert!(
            store
                .get("root:a", &services, "default", "kubernetes")
                .is_none()
        );
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "fresh"}});
        store
            .write(
                "root:a",
                &namespaces_key(),
                "",
                NameChoice::Exact("fresh".into()),
                false,
                |_, _, _| Ok(Decision::Put(ns)),
            )
            .unwrap_or_else(|e| panic!("{e:?}"));
        let account = store.get("root:a", &accounts, "fresh", "default");
        assert!(
            account.is_some_and(|a| a["metadata"]["annotations"][CLUSTER_ANNOTATION] == "root:a")
        );
    }

    #[test]
    fn workspaces_are_separate() {
        let store = Store::new(100, 100);
        put(&store, "a", "1");
        assert!(store.get("root:b", &key(), "default", "a").is_none());
        assert!(store.get("", &key(), "default", "a").is_some());
    }

    #[test]
    fn deleting_a_namespace_deletes_its_objects() {
        let store = Store::new(100, 100);
        put(&store, "a", "1");
        let ns_key = namespaces_key();
        store
            .write(
                "",
                &ns_key,
                "",
                NameChoice::Exact("default".into()),
                false,
                |view, _, cur| {
                    assert!(view.namespace("default").is_some());
                    Ok(Decision::Remove(
                        cur.map(|c| (**c).clone()).unwrap_or_default(),
                    ))
                },
            )
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(store.get("", &key(), "default", "a").is_none());
    }

    #[test]
    fn pages_continue_after_the_last_key() {
        let store = Store::new(100, 100);
        for n in ["a", "b", "c"] {
            put(&store, n, "1");
        }
        let p1 = store
            .list(&physical(), &key(), &Filter::default(), None, Some(2), None)
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((p1.items.len(), p1.remaining), (2, 1));
        // Later writes do not show in a continued list.
        put(&store, "d", "1");
        put(&store, "c", "2");
        let p2 = store
            .list(
                &physical(),
                &key(),
                &Filter::default(),
                p1.next,
                Some(2),
                Some(p1.rv),
            )
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((p2.items.len(), p2.remaining, p2.next), (1, 0, None));
        assert_eq!(p2.items[0]["data"]["k"], "1");
        assert_eq!(p2.rv, p1.rv);
    }
}
