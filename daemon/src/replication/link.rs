//! The link between daemons: the cluster secret every peer call carries (metadata key
//! [`SECRET_METADATA_KEY`]), mutual TLS with the cluster's CA ([`PeerTls`]), the
//! statically configured peers (`--peer NODE_ID=HOST:PORT`) and the client that
//! reaches one ([`connect`]), and the stream's chunk, window and keepalive sizes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use stowage_proto::stowage::v1::peer_client::PeerClient;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

/// The gRPC metadata key that carries the cluster secret.
pub const SECRET_METADATA_KEY: &str = "x-stowage-cluster-secret";

/// Errors of the peer service's set-up and client side.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The secret file could not be read.
    #[error("read cluster secret {0}")]
    SecretFile(PathBuf, #[source] std::io::Error),
    /// The secret is empty or not printable ASCII (it travels as a metadata value).
    #[error("cluster secret in {0} must be non-empty printable ASCII")]
    BadSecret(PathBuf),
    /// A `--peer` value is not `NODE_ID=HOST:PORT`.
    #[error("peer {0:?}: expected NODE_ID=HOST:PORT")]
    BadPeer(String),
    /// No peer of that node id is configured.
    #[error("no peer {0:?} is configured (--peer NODE_ID=HOST:PORT)")]
    UnknownPeer(String),
    /// Connecting to a peer failed.
    #[error("connect to peer {0}")]
    Connect(String, #[source] tonic::transport::Error),
    /// A TLS file could not be read.
    #[error("read {0}")]
    TlsFile(PathBuf, #[source] std::io::Error),
    /// The TLS settings were refused.
    #[error("peer TLS settings")]
    Tls(#[source] tonic::transport::Error),
}

/// Mutual TLS for the peer link: this node's certificate and key, and the cluster
/// CA that every peer's certificate must be signed by. A node's certificate names its
/// node id (a DNS subject alternative name), which clients check.
#[derive(Clone)]
pub struct PeerTls {
    identity: tonic::transport::Identity,
    ca: tonic::transport::Certificate,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerTls(..)")
    }
}

impl PeerTls {
    /// Reads PEM files: certificate (chain), private key, CA certificate.
    pub fn from_files(cert: &Path, key: &Path, ca: &Path) -> Result<Self, PeerError> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| PeerError::TlsFile(p.to_path_buf(), e));
        Ok(PeerTls {
            identity: tonic::transport::Identity::from_pem(read(cert)?, read(key)?),
            ca: tonic::transport::Certificate::from_pem(read(ca)?),
        })
    }

    pub(crate) fn server(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
    }

    fn client(&self, node_id: &str) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(node_id)
    }
}

/// The cluster's shared secret. Its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct ClusterSecret {
    value: AsciiMetadataValue,
    digest: blake3::Hash,
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

impl ClusterSecret {
    /// The secret in `path`, without surrounding whitespace.
    pub fn from_file(path: &Path) -> Result<Self, PeerError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| PeerError::SecretFile(path.to_path_buf(), e))?;
        Self::new(text.trim()).ok_or_else(|| PeerError::BadSecret(path.to_path_buf()))
    }

    /// `secret` if it is non-empty printable ASCII.
    pub fn new(secret: &str) -> Option<Self> {
        if secret.is_empty() || !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        Some(ClusterSecret {
            value: secret.parse().ok()?,
            digest: blake3::hash(secret.as_bytes()),
        })
    }

    /// True when `presented` is this secret. Digests are compared, in constant time
    /// (`blake3::Hash` equality), so the time taken says nothing about the secret.
    pub fn matches(&self, presented: &[u8]) -> bool {
        blake3::hash(presented) == self.digest
    }
}

/// Client side: adds the secret to every call.
#[derive(Debug, Clone)]
pub struct SendSecret {
    secret: ClusterSecret,
}

impl Interceptor for SendSecret {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut()
            .insert(SECRET_METADATA_KEY, self.secret.value.clone());
        Ok(req)
    }
}

/// A client of a peer's service that presents the cluster secret.
pub type AuthedPeerClient = PeerClient<InterceptedService<Channel, SendSecret>>;

/// Connects to the peer service at `addr` (`HOST:PORT`), presenting `secret`. HTTP/2
/// keepalive pings notice a peer that went away mid-stream (a link down sends no
/// reset) within about ten seconds.
pub async fn connect(
    addr: &str,
    secret: &ClusterSecret,
    tls: Option<(&PeerTls, &str)>,
) -> Result<AuthedPeerClient, PeerError> {
    let channel = open_channel(addr, tls).await?;
    Ok(PeerClient::with_interceptor(channel, send_secret(secret)))
}

/// The interceptor that presents `secret` on every call of a client.
pub fn send_secret(secret: &ClusterSecret) -> SendSecret {
    SendSecret {
        secret: secret.clone(),
    }
}

/// An HTTP/2 channel to the peer listener at `addr` (`HOST:PORT`), over TLS checking
/// the server names `node_id` when `tls` is given. Every service a daemon serves on
/// its peer listener is reached through such a channel and [`send_secret`].
pub async fn open_channel(addr: &str, tls: Option<(&PeerTls, &str)>) -> Result<Channel, PeerError> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| PeerError::Connect(addr.to_string(), e))?;
    if let Some((tls, node_id)) = tls {
        endpoint = endpoint
            .tls_config(tls.client(node_id))
            .map_err(PeerError::Tls)?;
    }
    endpoint
        .connect_timeout(KEEPALIVE)
        .http2_keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true)
        .initial_stream_window_size(WINDOW)
        .initial_connection_window_size(2 * WINDOW)
        .connect()
        .await
        .map_err(|e| PeerError::Connect(addr.to_string(), e))
}

/// The statically configured peers and the secret to reach them.
#[derive(Debug, Clone, Default)]
pub struct Peers {
    /// Node id → `HOST:PORT` of its peer service.
    pub addrs: BTreeMap<String, String>,
    /// The cluster secret (None: peering is off).
    pub secret: Option<ClusterSecret>,
    /// Mutual TLS for the link (None: plain TCP).
    pub tls: Option<PeerTls>,
}

impl Peers {
    /// Parses `--peer` values (`NODE_ID=HOST:PORT`).
    pub fn parse(values: &[String], secret: Option<ClusterSecret>) -> Result<Self, PeerError> {
        let mut addrs = BTreeMap::new();
        for v in values {
            let (id, addr) = v
                .split_once('=')
                .filter(|(id, addr)| !id.is_empty() && addr.contains(':'))
                .ok_or_else(|| PeerError::BadPeer(v.clone()))?;
            addrs.insert(id.to_string(), addr.to_string());
        }
        Ok(Peers {
            addrs,
            secret,
            tls: None,
        })
    }

    /// Connects to configured peer `node_id`'s peer service.
    pub async fn connect(&self, node_id: &str) -> Result<AuthedPeerClient, PeerError> {
        let (channel, secret) = self.channel(node_id).await?;
        Ok(PeerClient::with_interceptor(channel, secret))
    }

    /// A channel to configured peer `node_id`'s listener and the interceptor that
    /// presents the secret there, for any service it serves.
    pub async fn channel(&self, node_id: &str) -> Result<(Channel, SendSecret), PeerError> {
        let addr = self
            .addrs
            .get(node_id)
            .ok_or_else(|| PeerError::UnknownPeer(node_id.to_string()))?;
        let secret = self
            .secret
            .as_ref()
            .ok_or_else(|| PeerError::UnknownPeer(node_id.to_string()))?;
        let channel = open_channel(addr, self.tls.as_ref().map(|t| (t, node_id))).await?;
        Ok((channel, send_secret(secret)))
    }
}

/// Largest data chunk of a replication stream.
pub const MAX_CHUNK: usize = 1 << 20;
/// HTTP/2 flow-control window of a peer stream: a few 1 MiB chunks in flight, so the
/// sender is not held up waiting for each window update.
pub const WINDOW: u32 = 4 << 20;
/// Keepalive ping interval and timeout of peer connections (both sides).
pub const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::{ClusterSecret, Peers};

    #[test]
    fn secret_matches_only_itself_and_debug_hides_it() {
        let s = ClusterSecret::new("s3cret-value").unwrap();
        assert!(s.matches(b"s3cret-value"));
        assert!(!s.matches(b"s3cret-valuf"));
        assert!(!s.matches(b""));
        assert!(!format!("{s:?}").contains("s3cret"));
        assert!(ClusterSecret::new("").is_none());
        assert!(ClusterSecret::new("has space").is_none());
    }

    #[test]
    fn peers_parse_node_id_equals_address() {
        let p = Peers::parse(&["b=127.0.0.1:7000".to_string()], None).unwrap();
        assert_eq!(p.addrs["b"], "127.0.0.1:7000");
        assert!(Peers::parse(&["b".to_string()], None).is_err());
        assert!(Peers::parse(&["=1.2.3.4:5".to_string()], None).is_err());
        assert!(Peers::parse(&["b=nohostport".to_string()], None).is_err());
    }
}
