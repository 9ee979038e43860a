//! # transport: TLS under tonic, both ways
//!
//! Owns the TLS listener a tonic server serves from ([`incoming`]: accepts, handshakes off
//! the accept loop with a deadline, hands over only finished sessions, so tonic's
//! `Request::peer_certs` sees the caller's verified certificate) and client channels that
//! dial through TLS ([`channel`]: each new connection takes the newest certificates and
//! verifies the server's name and role).
//!
//! Must never let one slow or hostile handshake hold up the accept loop.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tracing::debug;

use crate::identity::Role;
use crate::material::TlsMaterial;

/// How long a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Finished handshakes waiting for the server to take them.
const ACCEPTED_BACKLOG: usize = 256;

/// Where a server takes its TLS config from for each new connection.
#[derive(Clone)]
pub enum ServerTls {
    /// Mutual TLS with the cluster's certificates (re-loaded on change).
    Cluster(Arc<TlsMaterial>),
    /// A fixed config.
    Fixed(Arc<ServerConfig>),
    /// The public API's own certificate (re-loaded on change).
    Public(Arc<crate::public::PublicTls>),
}

impl ServerTls {
    fn config(&self) -> Arc<ServerConfig> {
        match self {
            ServerTls::Cluster(material) => material.server_config(),
            ServerTls::Fixed(config) => config.clone(),
            ServerTls::Public(public) => public.server_config(),
        }
    }
}

/// The connections of `listener` after their TLS handshake, for
/// `tonic::transport::Server::serve_with_incoming`.
pub fn incoming(
    listener: TcpListener,
    tls: ServerTls,
) -> ReceiverStream<Result<TlsStream<TcpStream>, io::Error>> {
    let (ready, stream) = mpsc::channel(ACCEPTED_BACKLOG);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = ready.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors and the like: wait a little instead of spinning.
                    debug!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(tls.config());
            let ready = ready.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(session)) => {
                        let _ = ready.send(Ok(session)).await;
                    }
                    Ok(Err(error)) => debug!(%peer, %error, "tls handshake refused"),
                    Err(_) => debug!(%peer, "tls handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(stream)
}

/// A lazy channel to the server at `address` whose certificate must name `role` and carry
/// the DNS name `server_name`. `endpoint` sets the channel's timeouts and limits; its URI is
/// only used for the `:authority` header.
pub fn channel(
    endpoint: Endpoint,
    material: Arc<TlsMaterial>,
    address: String,
    role: Role,
    server_name: String,
) -> Result<Channel, crate::Error> {
    let name = ServerName::try_from(server_name.clone()).map_err(|_| crate::Error::Name {
        name: server_name,
        reason: "not a valid server name",
    })?;
    let connector = tower::service_fn(move |_: Uri| {
        let material = material.clone();
        let address = address.clone();
        let name = name.clone();
        async move {
            let tcp = TcpStream::connect(&address).await?;
            tcp.set_nodelay(true)?;
            let connector = TlsConnector::from(material.client_config(role));
            let session = connector.connect(name, tcp).await?;
            Ok::<_, io::Error>(TokioIo::new(session))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// How a process dials the internal planes: through mutual TLS, or (tests and benchmarks
/// only) in plaintext.
#[derive(Clone, Debug)]
pub enum Dialer {
    Plain,
    Tls(Arc<TlsMaterial>),
}

impl Dialer {
    /// A lazy channel to the server of `role` at `address` (`host:port`); `configure` sets the
    /// endpoint's timeouts and limits.
    pub fn channel(
        &self,
        address: &str,
        role: Role,
        configure: impl FnOnce(Endpoint) -> Endpoint,
    ) -> Result<Channel, crate::Error> {
        let endpoint =
            Endpoint::from_shared(format!("http://{address}")).map_err(|_| crate::Error::Name {
                name: address.to_owned(),
                reason: "not a host:port",
            })?;
        let endpoint = configure(endpoint);
        match self {
            Dialer::Plain => Ok(endpoint.connect_lazy()),
            Dialer::Tls(material) => {
                let server_name = match role {
                    Role::Control => crate::identity::CONTROL_SERVER_NAME,
                    Role::Node | Role::Operator => crate::identity::NODE_SERVER_NAME,
                };
                channel(
                    endpoint,
                    material.clone(),
                    address.to_owned(),
                    role,
                    server_name.to_owned(),
                )
            }
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Dialer::Tls(_))
    }
}
