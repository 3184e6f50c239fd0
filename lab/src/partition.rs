//! A TCP proxy that can go silent, as a network partition does: no close,
//! no reset, just nothing. The proxy's own kernel still acknowledges what
//! the client sends, as a middlebox (or a peer's kernel whose process hangs)
//! would, so only a client that expects answers in time ever notices.
//!
//! [`Partition::go_silent`] silences every connection open at that moment
//! for good, and black-holes the ones opened while silent; after
//! [`Partition::heal`] new connections are forwarded again while the
//! silenced ones stay silent, so a client recovers only by giving up on
//! them and connecting anew. What was sent during the partition is lost;
//! only a close gets through after the heal, as a FIN retransmitted past a
//! real partition does: the server learns that a client which gave up on a
//! silenced connection has gone, and ends its side of it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Partition {
    addr: SocketAddr,
    silent: watch::Sender<bool>,
    opened: Arc<AtomicU64>,
    _accept: tokio::task::JoinHandle<()>,
}

impl Partition {
    /// Listen on a free loopback port and forward to `target`; runs on the
    /// current tokio runtime.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Partition> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the partition proxy")?;
        let addr = listener.local_addr()?;
        let (silent, watching) = watch::channel(false);
        let opened = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&opened);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(forward(client, target, watching.clone()));
            }
        });
        Ok(Partition {
            addr,
            silent,
            opened,
            _accept: accept,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted so far.
    pub fn connections_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Stop forwarding: open connections fall silent for good, new ones
    /// are black-holed.
    pub fn go_silent(&self) {
        self.silent.send_replace(true);
    }

    /// Forward new connections again; silenced ones stay silent.
    pub fn heal(&self) {
        self.silent.send_replace(false);
    }
}

/// Forward one connection until either side closes or the partition
/// silences it; a silenced connection is held open, unread, for as long
/// as the proxy runs.
async fn forward(client: TcpStream, target: SocketAddr, mut silent: watch::Receiver<bool>) {
    if *silent.borrow_and_update() {
        let (client_read, client_write) = client.into_split();
        let no_server: Option<(TcpStream,)> = None;
        hold(client_read, (client_write, no_server), silent).await;
        return;
    }
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let pump = async {
        let mut up = [0u8; 16 * 1024];
        let mut down = [0u8; 16 * 1024];
        loop {
            tokio::select! {
                n = client_read.read(&mut up) => match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => if server_write.write_all(&up[..n]).await.is_err() { return },
                },
                n = server_read.read(&mut down) => match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => if client_write.write_all(&down[..n]).await.is_err() { return },
                },
            }
        }
    };
    let silenced = tokio::select! {
        _ = pump => false,
        _ = silent.wait_for(|s| *s) => true,
    };
    if silenced {
        let server = Some((server_read, server_write));
        hold(client_read, (client_write, server), silent).await;
    }
}

/// Keep a silenced connection open and unanswered. After the heal, what
/// the client sends is dropped, and once the client closes, so does the
/// server's side (`rest`).
async fn hold<T>(
    mut client: tokio::net::tcp::OwnedReadHalf,
    rest: T,
    mut silent: watch::Receiver<bool>,
) {
    let _ = silent.wait_for(|s| !*s).await;
    let mut lost = [0u8; 16 * 1024];
    while let Ok(1..) = client.read(&mut lost).await {}
    drop(rest);
}
