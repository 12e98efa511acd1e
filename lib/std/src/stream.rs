//! [`Stream`]: one accepted connection, plain TCP or TLS over it (with
//! the `tls` feature), with the non-blocking calls an event-loop server
//! makes, so that it keeps one code path for both.

use kiln_net::{Error, TcpStream};

pub enum Stream {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(kiln_tls::TlsStream),
}

impl Stream {
    /// Plaintext received; Ok(0) at the end, WouldBlock when none now.
    /// A TLS connection that fails (its handshake, a bad record) is
    /// `ConnectionReset`; [`Stream::tls_error`] says why.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        match self {
            Stream::Plain(s) => s.read(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(t) => t.read(buf),
        }
    }

    /// Sends (or, for TLS, queues) plaintext; Ok(0) or WouldBlock when
    /// there is no room now.
    pub fn write(&mut self, data: &[u8]) -> Result<usize, Error> {
        match self {
            Stream::Plain(s) => s.write(data),
            #[cfg(feature = "tls")]
            Stream::Tls(t) => t.write(data),
        }
    }

    /// Room for plaintext now.
    pub fn send_capacity(&self) -> usize {
        match self {
            Stream::Plain(s) => s.send_capacity(),
            #[cfg(feature = "tls")]
            Stream::Tls(t) => t.send_capacity(),
        }
    }

    /// Whether bytes are still on their way out (TLS records the socket
    /// has not taken yet).
    pub fn pending(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            #[cfg(feature = "tls")]
            Stream::Tls(t) => t.pending(),
        }
    }

    /// Sends what is waiting (TLS records the socket did not take).
    pub fn flush(&mut self) -> Result<(), Error> {
        match self {
            Stream::Plain(_) => Ok(()),
            #[cfg(feature = "tls")]
            Stream::Tls(t) => t.flush(),
        }
    }

    /// Why the TLS connection failed, if it did.
    pub fn tls_error(&self) -> Option<&str> {
        match self {
            Stream::Plain(_) => None,
            #[cfg(feature = "tls")]
            Stream::Tls(t) => t.session().error(),
        }
    }

    /// The peer's address and port.
    pub fn peer(&self) -> Option<(kiln_net::IpAddress, u16)> {
        match self {
            Stream::Plain(s) => s.peer(),
            #[cfg(feature = "tls")]
            Stream::Tls(t) => t.tcp().peer(),
        }
    }

    pub fn shutdown(&mut self) {
        match self {
            Stream::Plain(s) => s.shutdown(),
            #[cfg(feature = "tls")]
            Stream::Tls(t) => t.shutdown(),
        }
    }
}
