//! How this process reaches gRPC peers: `http://` in the clear, `https://` over TLS with the
//! process's client TLS settings (the CAs it trusts, the certificate it presents for mutual
//! TLS, the name it expects). A service sets them from `tls.*` at start, the CLI from its
//! settings; every channel made by [`endpoint`] uses them.

use std::sync::RwLock;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

static PROCESS_TLS: RwLock<Option<ClientTlsConfig>> = RwLock::new(None);

/// PEM contents of the client side of TLS.
#[derive(Clone, Default)]
pub struct ClientTls {
    /// CAs trusted for servers; empty: the system's roots.
    pub ca: Option<Vec<u8>>,
    /// Certificate chain and key presented to servers that ask for one.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name expected in the server's certificate instead of the URL's host.
    pub server_name: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca", &self.ca.is_some())
            .field("identity", &self.identity.is_some())
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl ClientTls {
    pub fn config(&self) -> ClientTlsConfig {
        let mut c = ClientTlsConfig::new();
        c = match &self.ca {
            Some(pem) => c.ca_certificate(Certificate::from_pem(pem)),
            None => c.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            c = c.identity(Identity::from_pem(cert, key));
        }
        if let Some(name) = &self.server_name {
            c = c.domain_name(name.clone());
        }
        c
    }
}

/// Sets the TLS settings of every `https://` channel made from now on (`None`: the system's
/// roots, no client certificate).
pub fn set_process_tls(tls: Option<&ClientTls>) {
    *PROCESS_TLS.write().unwrap_or_else(|p| p.into_inner()) = tls.map(ClientTls::config);
}

/// An endpoint for `url`: TLS with the process's settings when it is `https://`.
pub fn endpoint(url: &str) -> Result<Endpoint, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(url.to_owned())?;
    if url.starts_with("https://") {
        let tls = PROCESS_TLS
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| ClientTlsConfig::new().with_native_roots());
        endpoint.tls_config(tls)
    } else {
        Ok(endpoint)
    }
}
