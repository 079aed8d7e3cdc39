//! Serving one service on port 0 for black-box tests (feature `testsuite`, off by default).

use std::net::SocketAddr;
use std::path::Path;

use agent_learning_config::{Settings, Sources};
use agent_learning_server::GrpcServer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use crate::{Context, RuntimeError, Service, WithWhat as _, add, limits, serve};

/// The default settings with every embedded backend under `data_dir`.
pub fn settings_in(data_dir: &Path) -> Settings {
    Settings::load(&Sources {
        file: None,
        overrides: vec![("data_dir".into(), data_dir.display().to_string())],
    })
    .expect("the default settings load")
}

/// A loopback listener on a free port, and the address to build a [`Context`] for.
pub async fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free loopback port");
    let addr = listener.local_addr().expect("a bound address");
    (listener, addr)
}

/// One service built from a context and served until [`TestServer::shut_down`].
pub struct TestServer {
    pub addr: SocketAddr,
    stop: CancellationToken,
    server: JoinHandle<Result<(), RuntimeError>>,
}

impl TestServer {
    pub async fn start<S: Service>(
        ctx: Context,
        listener: TcpListener,
    ) -> Result<Self, RuntimeError> {
        let addr = listener.local_addr().what("listener")?;
        let keys = crate::api_keys(ctx.settings(), addr)?;
        let mut server = GrpcServer::new(limits(ctx.settings()))
            .what("server")?
            .with_keys(keys)
            .with_tls(crate::tls::server(ctx.settings())?);
        add::<S>(&ctx, &mut server).await?;
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(ctx, server, listener, stop.clone().cancelled_owned()));
        Ok(Self { addr, stop, server })
    }

    /// A lazily connected channel to the server.
    pub fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.addr))
            .expect("a loopback URL")
            .connect_lazy()
    }

    /// A lazily connected channel over TLS with the process's client settings (see
    /// [`crate::tls::apply_client`]), checking the certificate against `name`.
    pub fn tls_channel(&self) -> Channel {
        agent_learning_api::endpoint(&format!("https://{}", self.addr))
            .expect("a loopback URL")
            .connect_lazy()
    }

    /// Stops the server and waits for it to drain, so data directories outlive it.
    pub async fn shut_down(self) -> Result<(), RuntimeError> {
        self.stop.cancel();
        self.server.await.what("server task")?
    }
}
