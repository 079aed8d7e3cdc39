//! API keys and roles: who may call which RPC on which namespace.
//!
//! A caller sends `authorization: Bearer KEY` (or `x-api-key: KEY`). Keys are stored as their
//! SHA-256 in a keys file, one per line:
//!
//! ```text
//! # id            sha256 of the key (hex, 64 digits)                                grants
//! team-a-backend  9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08  decide:team-a,read:team-a
//! ops             2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae  *:*
//! ```
//!
//! A grant is `ROLE:NAMESPACE`: the role is `decide` (Decide, Feedback, GetPolicy), `read`
//! (playbook reads, runs, reflection), `learn` (Fit, Predict, Evaluate, Explore, Reflect,
//! Curate, FlushBatch, RecordFeedback, StartTraining, StartLiveLoop, the environments) or
//! `admin` (bullet edits and stages, Compile, CancelRun), or `*` for all four; the namespace
//! is a name, a prefix ending in `*`, or `*` for every namespace (the only grant that reaches
//! requests naming none, such as ListRuns over all namespaces). The file is read again when it changes, so keys rotate
//! without a restart. The internal key (`auth.internal_key`), which the services present to
//! each other, has every role on every namespace. Health checks never need a key.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest as _, Sha256};
use tracing::{info, warn};

/// What a method needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Decide,
    Read,
    Learn,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Decide => "decide",
            Role::Read => "read",
            Role::Learn => "learn",
            Role::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Option<Role>> {
        Some(match s {
            "*" => None,
            "decide" => Some(Role::Decide),
            "read" => Some(Role::Read),
            "learn" => Some(Role::Learn),
            "admin" => Some(Role::Admin),
            _ => return None,
        })
    }
}

/// The role an RPC needs, and whether its request names a namespace in field 1 (every
/// agent_learning request that has one has it there).
pub fn access(path: &str) -> (Role, bool) {
    let method = path.rsplit('/').next().unwrap_or_default();
    let service = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    if service.starts_with("grpc.reflection.") {
        return (Role::Read, false);
    }
    if service == "agent_learning.v1.Environment" {
        return (Role::Learn, false);
    }
    match method {
        "Decide" | "Feedback" | "GetPolicy" => (Role::Decide, true),
        "GetPlaybook" | "SearchPlaybook" | "RenderContext" | "GetPlaybookHealth"
        | "GetBulletHistory" | "ListRuns" => (Role::Read, true),
        // By run id: the coordinator checks the run's namespace.
        "GetRun" | "WatchRun" => (Role::Read, false),
        "Fit" | "Predict" | "Evaluate" | "Explore" | "Reflect" | "Curate" | "FlushBatch"
        | "RecordFeedback" | "StartTraining" | "StartLiveLoop" => (Role::Learn, true),
        "UpdateBullet" | "DeleteBullet" | "MergeBullets" | "SetBulletStage" | "Compile" => {
            (Role::Admin, true)
        }
        "CancelRun" => (Role::Admin, false),
        // Anything else (a method added without an entry here) needs the most.
        _ => (Role::Admin, true),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Grant {
    /// `None`: every role.
    role: Option<Role>,
    namespace: String,
}

impl Grant {
    fn covers_namespace(&self, ns: &str) -> bool {
        if self.namespace == "*" {
            return true;
        }
        if ns.is_empty() {
            return false; // a request over every namespace needs `*`
        }
        match self.namespace.strip_suffix('*') {
            Some(prefix) => ns.starts_with(prefix),
            None => self.namespace == ns,
        }
    }

    fn covers_role(&self, role: Role) -> bool {
        self.role.is_none_or(|r| r == role)
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The key's id (never the key): for logs, errors and provenance.
    pub id: String,
    grants: Vec<Grant>,
}

impl Principal {
    fn internal() -> Self {
        Self {
            id: "internal".into(),
            grants: vec![Grant {
                role: None,
                namespace: "*".into(),
            }],
        }
    }

    /// Whether the caller has `role` on `namespace` (`""`: on every namespace).
    pub fn allows(&self, role: Role, namespace: &str) -> bool {
        self.grants
            .iter()
            .any(|g| g.covers_role(role) && g.covers_namespace(namespace))
    }

    fn has_role(&self, role: Role) -> bool {
        self.grants.iter().any(|g| g.covers_role(role))
    }

    /// `PERMISSION_DENIED` with the reason unless the caller has `role` on `namespace`.
    pub fn check(&self, role: Role, namespace: &str) -> Result<(), tonic::Status> {
        if self.allows(role, namespace) {
            return Ok(());
        }
        let what = if namespace.is_empty() {
            "every namespace".to_owned()
        } else {
            format!("namespace {namespace:?}")
        };
        Err(tonic::Status::permission_denied(format!(
            "key {:?} has no {:?} grant for {what}",
            self.id,
            role.as_str()
        )))
    }
}

/// The SHA-256 of a key, as the keys file holds it (lowercase hex).
pub fn key_hash(key: &str) -> String {
    let digest = Sha256::digest(key.trim().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A keys file or text that cannot be used, with the line that is wrong.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("{source_name} line {line}: {reason}")]
    Line {
        source_name: String,
        line: usize,
        reason: String,
    },
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

fn parse_keys(text: &str, source_name: &str) -> Result<HashMap<String, Arc<Principal>>, KeysError> {
    let mut by_hash = HashMap::new();
    let mut ids = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let bad = |reason: String| KeysError::Line {
            source_name: source_name.to_owned(),
            line: i + 1,
            reason,
        };
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [id, hash, grants] = parts[..] else {
            return Err(bad(format!(
                "expected `ID SHA256 GRANTS`, found {} fields",
                parts.len()
            )));
        };
        if id.len() > 64 || id == "internal" {
            return Err(bad(format!(
                "id {id:?}: at most 64 characters, and not \"internal\" (the services' own key)"
            )));
        }
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("the key hash must be 64 hex digits (sha256)".into()));
        }
        if let Some(first) = ids.insert(id.to_owned(), i + 1) {
            return Err(bad(format!("id {id:?} is already on line {first}")));
        }
        let mut parsed = Vec::new();
        for g in grants.split(',').filter(|g| !g.is_empty()) {
            let (role, namespace) = g
                .split_once(':')
                .ok_or_else(|| bad(format!("grant {g:?} is not ROLE:NAMESPACE")))?;
            let role = Role::parse(role).ok_or_else(|| {
                bad(format!(
                    "grant {g:?}: role {role:?} is not decide, read, learn, admin or *"
                ))
            })?;
            if namespace.is_empty() || namespace[..namespace.len() - 1].contains('*') {
                return Err(bad(format!(
                    "grant {g:?}: the namespace is a name, a prefix ending in *, or *"
                )));
            }
            parsed.push(Grant {
                role,
                namespace: namespace.to_owned(),
            });
        }
        if parsed.is_empty() {
            return Err(bad("no grants".into()));
        }
        by_hash.insert(
            hash.to_ascii_lowercase(),
            Arc::new(Principal {
                id: id.to_owned(),
                grants: parsed,
            }),
        );
    }
    Ok(by_hash)
}

/// Where the keys come from.
#[derive(Debug, Clone, Default)]
pub struct KeySources {
    /// The keys file, read again when it changes.
    pub file: Option<PathBuf>,
    /// Keys in the same format, from the environment.
    pub inline: Option<String>,
    /// The key the services present to each other.
    pub internal_key: Option<String>,
}

struct Loaded {
    by_hash: HashMap<String, Arc<Principal>>,
    file_mtime: Option<SystemTime>,
    checked: Instant,
}

/// The keys a server accepts.
pub struct KeyStore {
    sources: KeySources,
    loaded: RwLock<Loaded>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self
            .loaded
            .read()
            .map(|l| l.by_hash.len())
            .unwrap_or_default();
        f.debug_struct("KeyStore")
            .field("keys", &n)
            .field("file", &self.sources.file)
            .finish_non_exhaustive()
    }
}

/// How often the keys file's modification time is looked at.
const RELOAD_CHECK: Duration = Duration::from_secs(2);

impl KeyStore {
    pub fn load(sources: KeySources) -> Result<Self, KeysError> {
        let (by_hash, file_mtime) = Self::read(&sources)?;
        info!(keys = by_hash.len(), "api keys loaded");
        Ok(Self {
            sources,
            loaded: RwLock::new(Loaded {
                by_hash,
                file_mtime,
                checked: Instant::now(),
            }),
        })
    }

    #[allow(clippy::type_complexity)]
    fn read(
        sources: &KeySources,
    ) -> Result<(HashMap<String, Arc<Principal>>, Option<SystemTime>), KeysError> {
        let mut by_hash = HashMap::new();
        let mut mtime = None;
        if let Some(text) = &sources.inline {
            by_hash.extend(parse_keys(text, "auth.keys")?);
        }
        if let Some(file) = &sources.file {
            let name = file.display().to_string();
            match std::fs::metadata(file).and_then(|m| m.modified()) {
                // Not there (yet): no keys from it; it is read once it appears (a Secret
                // mounted later, say).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(KeysError::Io(name, e)),
                Ok(modified) => {
                    mtime = Some(modified);
                    let text = std::fs::read_to_string(file)
                        .map_err(|e| KeysError::Io(name.clone(), e))?;
                    by_hash.extend(parse_keys(&text, &name)?);
                }
            }
        }
        if let Some(key) = &sources.internal_key {
            by_hash.insert(key_hash(key), Arc::new(Principal::internal()));
        }
        Ok((by_hash, mtime))
    }

    /// Reads the keys file again if it changed since it was read; a file that became
    /// unreadable or wrong keeps the keys it had, with a warning.
    fn maybe_reload(&self) {
        let Some(file) = &self.sources.file else {
            return;
        };
        {
            let loaded = self.loaded.read().unwrap_or_else(|p| p.into_inner());
            if loaded.checked.elapsed() < RELOAD_CHECK {
                return;
            }
        }
        let mut loaded = self.loaded.write().unwrap_or_else(|p| p.into_inner());
        if loaded.checked.elapsed() < RELOAD_CHECK {
            return;
        }
        loaded.checked = Instant::now();
        let mtime = std::fs::metadata(file).and_then(|m| m.modified()).ok();
        if mtime == loaded.file_mtime {
            return;
        }
        match Self::read(&self.sources) {
            Ok((by_hash, mtime)) => {
                info!(keys = by_hash.len(), file = %file.display(), "api keys reloaded");
                loaded.by_hash = by_hash;
                loaded.file_mtime = mtime;
            }
            Err(e) => warn!(error = %e, "api keys not reloaded; the previous keys stay"),
        }
    }

    /// The caller a key belongs to.
    pub fn authenticate(&self, key: &str) -> Option<Arc<Principal>> {
        self.maybe_reload();
        let loaded = self.loaded.read().unwrap_or_else(|p| p.into_inner());
        loaded.by_hash.get(&key_hash(key)).cloned()
    }
}

/// The key a request carries: `authorization: Bearer KEY`, else `x-api-key: KEY`.
pub fn presented_key(headers: &http::HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(http::header::AUTHORIZATION)
        && let Ok(v) = v.to_str()
    {
        let v = v.trim();
        if let Some(key) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
        {
            return Some(key.trim());
        }
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Field 1 of a unary gRPC request body (one uncompressed frame) when it is a string: the
/// namespace of every agent_learning request that has one. `None` when the frame cannot be
/// read that way; `Some("")` when field 1 is absent (an empty namespace).
pub fn namespace_of(frame: &[u8]) -> Option<String> {
    if frame.len() < 5 || frame[0] != 0 {
        return None; // too short, or compressed
    }
    let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
    let mut msg = frame.get(5..5 + len)?;
    while !msg.is_empty() {
        let (tag, rest) = varint(msg)?;
        msg = rest;
        let (field, wire) = (tag >> 3, tag & 7);
        match wire {
            0 => msg = varint(msg)?.1,
            1 => msg = msg.get(8..)?,
            2 => {
                let (n, rest) = varint(msg)?;
                let n = usize::try_from(n).ok()?;
                let value = rest.get(..n)?;
                if field == 1 {
                    return String::from_utf8(value.to_vec()).ok();
                }
                msg = &rest[n..];
            }
            5 => msg = msg.get(4..)?,
            _ => return None,
        }
    }
    Some(String::new())
}

fn varint(buf: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, b) in buf.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, &buf[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(grants: &str) -> Principal {
        let line = format!("k {} {grants}", key_hash("secret"));
        let keys = parse_keys(&line, "test").unwrap();
        (*keys[&key_hash("secret")]).clone()
    }

    #[test]
    fn grants_cover_roles_and_namespaces() {
        let p = principal("decide:team-a,read:team-a-*");
        assert!(p.allows(Role::Decide, "team-a"));
        assert!(!p.allows(Role::Decide, "team-b"));
        assert!(!p.allows(Role::Admin, "team-a"));
        assert!(p.allows(Role::Read, "team-a-eu"));
        assert!(!p.allows(Role::Read, "team-a"));
        assert!(!p.allows(Role::Read, ""), "every namespace needs *");
        let admin = principal("*:*");
        assert!(admin.allows(Role::Admin, "") && admin.allows(Role::Learn, "x"));
        let err = p.check(Role::Admin, "team-a").unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            err.message(),
            "key \"k\" has no \"admin\" grant for namespace \"team-a\""
        );
    }

    #[test]
    fn a_bad_keys_file_names_its_line() {
        let good = key_hash("a");
        for (text, want) in [
            (
                format!("a {good} decide:x\nb nothex read:x"),
                "line 2: the key hash",
            ),
            (format!("a {good} fly:x"), "line 1: grant \"fly:x\": role"),
            (
                format!("# c\n\na {good}"),
                "line 3: expected `ID SHA256 GRANTS`",
            ),
            (
                format!("a {good} read:x\na {good} read:y"),
                "line 2: id \"a\"",
            ),
            (format!("a {good} read:x*y"), "line 1: grant \"read:x*y\""),
        ] {
            let err = parse_keys(&text, "keys.txt").unwrap_err().to_string();
            assert!(err.starts_with(&format!("keys.txt {want}")), "{err}");
        }
    }

    #[test]
    fn the_namespace_is_read_from_field_one() {
        // field 1 = "team-a", field 2 = "x", as prost encodes DecideRequest.
        let msg = [vec![0x0a, 6], b"team-a".to_vec(), vec![0x12, 1, b'x']].concat();
        let mut frame = vec![0u8];
        frame.extend((msg.len() as u32).to_be_bytes());
        frame.extend(&msg);
        assert_eq!(namespace_of(&frame).as_deref(), Some("team-a"));
        // Field 1 absent: the empty namespace.
        let msg = [0x12, 1, b'x'];
        let mut frame = vec![0u8, 0, 0, 0, 3];
        frame.extend(msg);
        assert_eq!(namespace_of(&frame).as_deref(), Some(""));
        // Compressed or truncated frames are not read.
        assert_eq!(namespace_of(&[1, 0, 0, 0, 0]), None);
        assert_eq!(namespace_of(&[0, 0, 0, 0, 9, 0x0a]), None);
    }

    #[test]
    fn a_keys_file_that_appears_later_is_read() {
        let dir = std::env::temp_dir().join(format!("al-keys-late-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("api-keys");
        let _ = std::fs::remove_file(&file);
        let store = KeyStore::load(KeySources {
            file: Some(file.clone()),
            internal_key: Some("k-internal".into()),
            ..Default::default()
        })
        .unwrap();
        assert!(store.authenticate("k-late").is_none());
        std::fs::write(&file, format!("late {} read:*\n", key_hash("k-late"))).unwrap();
        {
            let mut loaded = store.loaded.write().unwrap();
            loaded.checked = loaded.checked.checked_sub(RELOAD_CHECK).unwrap();
        }
        assert_eq!(store.authenticate("k-late").unwrap().id, "late");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keys_rotate_when_the_file_changes() {
        let dir = std::env::temp_dir().join(format!("al-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("keys");
        std::fs::write(&file, format!("old {} read:*\n", key_hash("k-old"))).unwrap();
        let store = KeyStore::load(KeySources {
            file: Some(file.clone()),
            internal_key: Some("k-internal".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(store.authenticate("k-old").unwrap().id, "old");
        assert_eq!(store.authenticate("k-internal").unwrap().id, "internal");
        assert!(store.authenticate("k-new").is_none());
        std::fs::write(&file, format!("new {} read:*\n", key_hash("k-new"))).unwrap();
        // A different mtime, whatever the file system's resolution.
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(later)
            .unwrap();
        {
            let mut loaded = store.loaded.write().unwrap();
            loaded.checked = loaded.checked.checked_sub(RELOAD_CHECK).unwrap();
        }
        assert!(store.authenticate("k-old").is_none());
        assert_eq!(store.authenticate("k-new").unwrap().id, "new");
        assert!(store.authenticate("k-internal").is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// The gRPC layer that authenticates every call but health checks, checks the method's role
/// and, for a request naming a namespace, the grant for it; the caller's [`Principal`] goes
/// into the request's extensions for handlers that check a namespace themselves (runs by id).
#[derive(Clone)]
pub(crate) struct Authed<S> {
    pub(crate) inner: S,
    /// `None`: authentication is off and every call passes.
    pub(crate) keys: Option<Arc<KeyStore>>,
    pub(crate) max_body: usize,
}

impl<S, RB> tower::Service<http::Request<tonic::body::Body>> for Authed<S>
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<RB>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = crate::BoxFuture<S::Response, S::Error>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        let path = req.uri().path().to_owned();
        let Some(keys) = self.keys.clone() else {
            return Box::pin(self.inner.call(req));
        };
        if path.starts_with("/grpc.health.") {
            return Box::pin(self.inner.call(req));
        }
        let refuse = |status: tonic::Status| -> Self::Future {
            let response = status.into_http::<RB>();
            Box::pin(async move { Ok(response) })
        };
        let Some(key) = presented_key(req.headers()) else {
            return refuse(tonic::Status::unauthenticated(
                "no API key: send `authorization: Bearer KEY`",
            ));
        };
        let Some(principal) = keys.authenticate(key) else {
            return refuse(tonic::Status::unauthenticated("unknown API key"));
        };
        let (role, namespaced) = access(&path);
        if !principal.has_role(role) {
            return refuse(tonic::Status::permission_denied(format!(
                "key {:?} has no {:?} grant ({path} needs it)",
                principal.id,
                role.as_str()
            )));
        }
        req.extensions_mut().insert(principal.clone());
        if !namespaced {
            return Box::pin(self.inner.call(req));
        }
        // The namespace is in the request message: read the (unary) body, check, pass it on.
        let max = self.max_body;
        // The service that was polled ready is the one that must be called.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            use http_body_util::BodyExt as _;
            let (parts, body) = req.into_parts();
            let bytes = match http_body_util::Limited::new(body, max + 5).collect().await {
                Ok(c) => c.to_bytes(),
                Err(_) => {
                    return Ok(tonic::Status::invalid_argument(
                        "request body unreadable or over the message size limit",
                    )
                    .into_http::<RB>());
                }
            };
            let Some(namespace) = namespace_of(&bytes) else {
                return Ok(tonic::Status::invalid_argument(
                    "request not readable as one uncompressed message",
                )
                .into_http::<RB>());
            };
            if let Err(status) = principal.check(role, &namespace) {
                return Ok(status.into_http::<RB>());
            }
            let req = http::Request::from_parts(
                parts,
                tonic::body::Body::new(http_body_util::Full::new(bytes)),
            );
            inner.call(req).await
        })
    }
}
