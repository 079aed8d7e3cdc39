//! `tls.*` read into what the servers and clients of this process use.

use std::path::Path;

use agent_learning_api::ClientTls;
use agent_learning_config::Settings;
use agent_learning_server::ServerTlsConfig;
use tonic::transport::{Certificate, Identity};

use crate::{Result, RuntimeError};

fn read(key: &str, path: &Path) -> Result<Vec<u8>> {
    let pem = std::fs::read(path)
        .map_err(|e| RuntimeError::new(key, format!("{}: {e}", path.display())))?;
    if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(RuntimeError::new(
            key,
            format!("{} holds no PEM block", path.display()),
        ));
    }
    Ok(pem)
}

/// The servers' TLS: `None` unless `tls.cert` and `tls.key` are set; mutual TLS with
/// `tls.client_ca`.
pub fn server(settings: &Settings) -> Result<Option<ServerTlsConfig>> {
    let t = &settings.tls;
    let (Some(cert), Some(key)) = (&t.cert, &t.key) else {
        return Ok(None);
    };
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(
        read("tls.cert", cert)?,
        read("tls.key", key)?,
    ));
    if let Some(ca) = &t.client_ca {
        config = config.client_ca_root(Certificate::from_pem(read("tls.client_ca", ca)?));
    }
    Ok(Some(config))
}

/// The client side: what `https://` peers are checked against and what this process presents.
pub fn client(settings: &Settings) -> Result<ClientTls> {
    let t = &settings.tls;
    Ok(ClientTls {
        ca: t.ca.as_deref().map(|p| read("tls.ca", p)).transpose()?,
        identity: match (&t.client_cert, &t.client_key) {
            (Some(c), Some(k)) => Some((read("tls.client_cert", c)?, read("tls.client_key", k)?)),
            _ => None,
        },
        server_name: t.server_name.clone(),
    })
}

/// Makes `tls.*` the client TLS of every channel this process makes from now on.
pub fn apply_client(settings: &Settings) -> Result<()> {
    agent_learning_server::install_crypto_provider();
    let tls = client(settings)?;
    agent_learning_api::set_process_tls(Some(&tls));
    Ok(())
}

/// The scheme of this process's own server: `https` when it serves TLS.
pub fn own_scheme(settings: &Settings) -> &'static str {
    if settings.tls.cert.is_some() {
        "https"
    } else {
        "http"
    }
}
