//! A TCP link the caller cuts and restores: what a dependency going away looks like to a
//! process connected through it (every connection dropped, new ones refused), without touching
//! the server itself or anyone else using it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::task::{AbortHandle, JoinHandle};

use crate::{Result, io};

/// A local port forwarded to a target, up until [`Link::cut`] (see the module docs). Must be
/// made on a tokio runtime; it stops with the handle.
#[derive(Debug)]
pub struct Link {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<AbortHandle>>>,
    accept: JoinHandle<()>,
}

impl Link {
    /// Forwards a free local port to `target` (`host:port`).
    pub async fn start(target: &str) -> Result<Self> {
        Self::start_on("127.0.0.1:0".parse().map_err(|_| crate::Error::Failed("bad address".into()))?, target).await
    }

    /// Forwards `bind` (an address of this host, port 0 for any) to `target`.
    pub async fn start_on(bind: SocketAddr, target: &str) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(bind).await.map_err(io(format!("binding a link on {bind}")))?;
        let addr = listener.local_addr().map_err(io("binding a link"))?;
        let up = Arc::new(AtomicBool::new(true));
        let open = Arc::new(Mutex::new(Vec::<AbortHandle>::new()));
        let (target, link_up, link_open) = (target.to_owned(), up.clone(), open.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !link_up.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                if let Ok(mut open) = link_open.lock() {
                    open.retain(|t| !t.is_finished());
                    open.push(task.abort_handle());
                }
            }
        });
        Ok(Self { addr, up, open, accept })
    }

    /// Where to connect instead of the target.
    pub const fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether connections go through now.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    /// Drops every connection through the link and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        if let Ok(mut open) = self.open.lock() {
            for task in open.drain(..) {
                task.abort();
            }
        }
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// `url` (`scheme://[user@]host:port[/path]`) with its host and port replaced by the link's.
    pub fn rewrite(&self, url: &str) -> Result<String> {
        let (scheme, rest) =
            url.split_once("://").ok_or_else(|| crate::Error::Failed(format!("{url:?} has no scheme")))?;
        let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        let user = authority.rsplit_once('@').map(|(user, _)| format!("{user}@")).unwrap_or_default();
        Ok(format!("{scheme}://{user}{}/{path}", self.addr))
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Through the link, an echo answers; cut, the open connection ends and a new one gets
    /// nothing; restored, it answers again.
    #[tokio::test]
    async fn a_cut_link_drops_and_refuses_until_restored() -> Result<()> {
        let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(io("echo"))?;
        let target = echo.local_addr().map_err(io("echo"))?.to_string();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = socket.read(&mut buf).await {
                        if n == 0 || socket.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let link = Link::start(&target).await?;
        let echoes = |addr: SocketAddr| async move {
            let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { return false };
            if s.write_all(b"ping").await.is_err() {
                return false;
            }
            let mut buf = [0u8; 4];
            matches!(
                tokio::time::timeout(std::time::Duration::from_millis(300), s.read_exact(&mut buf)).await,
                Ok(Ok(_))
            ) && &buf == b"ping"
        };
        assert!(echoes(link.addr()).await);
        let mut open = tokio::net::TcpStream::connect(link.addr()).await.map_err(io("connect"))?;
        open.write_all(b"x").await.map_err(io("write"))?;
        let mut one = [0u8; 1];
        open.read_exact(&mut one).await.map_err(io("read"))?;
        link.cut();
        assert!(!link.is_up());
        let ended = tokio::time::timeout(std::time::Duration::from_secs(2), open.read(&mut one)).await;
        assert!(matches!(ended, Ok(Ok(0)) | Ok(Err(_))), "the open connection ends: {ended:?}");
        assert!(!echoes(link.addr()).await, "new connections get nothing");
        link.restore();
        assert!(echoes(link.addr()).await);
        assert_eq!(link.rewrite("postgres://u@127.0.0.1:5432/db")?, format!("postgres://u@{}/db", link.addr()));
        Ok(())
    }
}
