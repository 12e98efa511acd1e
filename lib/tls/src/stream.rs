//! [`TlsStream`]: a [`Session`] over one of lib/net's TCP connections,
//! non-blocking, with the calls an event-loop server makes on a plain
//! connection (`read`, `write`, `send_capacity`, `shutdown`), so that a
//! server keeps one code path for both.

use crate::Session;
use alloc::string::String;
use kiln_net::{Error, TcpStream};

pub struct TlsStream {
    tcp: TcpStream,
    session: alloc::boxed::Box<Session>,
    /// The peer closed its side of the TCP connection.
    eof: bool,
}

impl TlsStream {
    /// Wraps a freshly accepted (non-blocking) connection.
    pub fn new(
        tcp: TcpStream,
        config: alloc::sync::Arc<crate::ServerConfig>,
    ) -> Result<TlsStream, String> {
        Ok(TlsStream {
            tcp,
            session: alloc::boxed::Box::new(Session::new(config)?),
            eof: false,
        })
    }

    /// The client's end over a connection this side opened to
    /// `server_name` (see [`Session::client`]); the handshake runs as the
    /// stream is read and written.
    pub fn client(
        tcp: TcpStream,
        config: alloc::sync::Arc<crate::ClientConfig>,
        server_name: &str,
    ) -> Result<TlsStream, String> {
        Ok(TlsStream {
            tcp,
            session: alloc::boxed::Box::new(Session::client(config, server_name)?),
            eof: false,
        })
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// The TLS session (handshake state, errors, the peer's certificates).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Plaintext received: Ok(0) at the end, `WouldBlock` when none has
    /// come. A failed handshake or bad record is `ConnectionReset`, after
    /// the alert is on its way; [`Session::error`] says why.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let mut cipher = [0u8; 4096];
        while !self.eof {
            match self.tcp.read(&mut cipher) {
                Ok(0) => self.eof = true,
                Ok(n) => self.session.received(&cipher[..n]),
                Err(Error::WouldBlock) => break,
                Err(e) => return Err(e),
            }
        }
        self.flush()?;
        if self.session.error().is_some() {
            return Err(Error::ConnectionReset);
        }
        match self.session.read(buf) {
            0 if self.eof || self.session.peer_closed() => Ok(0),
            0 => Err(Error::WouldBlock),
            n => Ok(n),
        }
    }

    /// Queues plaintext (encrypted as soon as the handshake allows) and
    /// sends what the connection takes; how much was queued (0 when the
    /// session holds all it will).
    pub fn write(&mut self, data: &[u8]) -> Result<usize, Error> {
        let n = self.session.write(data);
        self.flush()?;
        Ok(n)
    }

    /// Room for plaintext now.
    pub fn send_capacity(&self) -> usize {
        self.session.send_capacity()
    }

    /// Whether TLS records are still waiting for the connection.
    pub fn pending(&self) -> bool {
        !self.session.outgoing().is_empty()
    }

    /// Sends the records the connection takes.
    pub fn flush(&mut self) -> Result<(), Error> {
        while !self.session.outgoing().is_empty() {
            match self.tcp.write(self.session.outgoing()) {
                Ok(0) | Err(Error::WouldBlock) => break,
                Ok(n) => self.session.sent(n),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// close_notify, then the TCP connection's end.
    pub fn shutdown(&mut self) {
        self.session.close();
        let _ = self.flush();
        self.tcp.shutdown();
    }
}
