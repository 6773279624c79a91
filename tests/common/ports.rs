//! Loopback ports for peers: a free address to hand out, and a [`DeadPort`] that keeps refusing
//! connections for as long as it lives.

use std::net::SocketAddr;

/// A loopback address nobody listens on right now (bind port 0, drop). The port may be
/// handed out again: for a peer that must stay dead use [`DeadPort`].
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr")
}

/// A loopback port that refuses connections for as long as this value lives: bound but not
/// listening, so no other socket (a gateway listener, say) can take it meanwhile.
pub struct DeadPort {
    _socket: tokio::net::TcpSocket,
    pub addr: SocketAddr,
}

impl DeadPort {
    pub fn new() -> DeadPort {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let addr = socket.local_addr().expect("local addr");
        DeadPort {
            _socket: socket,
            addr,
        }
    }

    pub fn peer(&self) -> String {
        self.addr.to_string()
    }
}

impl Default for DeadPort {
    fn default() -> Self {
        Self::new()
    }
}
