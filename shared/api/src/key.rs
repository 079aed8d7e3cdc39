//! The API key a client presents (`authorization: Bearer KEY`).
//!
//! A process has one key it presents by default: a service's is `auth.internal_key`, the CLI's
//! is `--api-key` (or `AGENT_LEARNING_API_KEY`). Every client made with `new` carries the key
//! the process had when the client was made; `new_with_key` names another.

use std::sync::RwLock;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::Channel;

static PROCESS_KEY: RwLock<Option<MetadataValue<Ascii>>> = RwLock::new(None);

/// A key that is not usable in a header.
#[derive(Debug, thiserror::Error)]
#[error("API key: only visible ASCII characters can be sent in a header")]
pub struct InvalidKey;

/// Sets (or, with `None`, clears) the key every client made from now on presents.
pub fn set_process_key(key: Option<&str>) -> Result<(), InvalidKey> {
    let value = key.map(ApiKey::header).transpose()?;
    *PROCESS_KEY.write().unwrap_or_else(|p| p.into_inner()) = value;
    Ok(())
}

/// The key of one client (and, for a process's calls to its own server, the peer header);
/// `Debug` never shows either.
#[derive(Clone, Default)]
pub struct ApiKey(
    Option<MetadataValue<Ascii>>,
    Option<(&'static str, MetadataValue<Ascii>)>,
);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "ApiKey(***)"
        } else {
            "ApiKey(none)"
        })
    }
}

impl ApiKey {
    fn header(key: &str) -> Result<MetadataValue<Ascii>, InvalidKey> {
        let key = key.trim();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidKey);
        }
        let mut value: MetadataValue<Ascii> =
            format!("Bearer {key}").parse().map_err(|_| InvalidKey)?;
        value.set_sensitive(true);
        Ok(value)
    }

    pub fn new(key: &str) -> Result<Self, InvalidKey> {
        Ok(Self(Some(Self::header(key)?), None))
    }

    /// No key: an anonymous caller.
    pub fn none() -> Self {
        Self(None, None)
    }

    /// The same key, and `name: value` on every call (a process's calls to its own server).
    pub fn with_header(mut self, name: &'static str, value: &str) -> Result<Self, InvalidKey> {
        let mut v: MetadataValue<Ascii> = value.parse().map_err(|_| InvalidKey)?;
        v.set_sensitive(true);
        self.1 = Some((name, v));
        Ok(self)
    }

    /// The process's key (see [`set_process_key`]).
    pub fn process() -> Self {
        Self(
            PROCESS_KEY
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            None,
        )
    }
}

impl Interceptor for ApiKey {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        if let Some((name, v)) = &self.1 {
            req.metadata_mut().insert(*name, v.clone());
        }
        Ok(req)
    }
}

/// The channel type of every client: a channel that adds the key.
pub type KeyedChannel = tonic::service::interceptor::InterceptedService<Channel, ApiKey>;
