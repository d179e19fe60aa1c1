//! Serving the agent's port: TLS (rustls) on every TCP connection, and the agent's Unix
//! socket for local root; hyper's HTTP/1.1 server around the axum router. Each request
//! carries a [`Peer`] extension: the node its client certificate names, the local user, or
//! nobody (then an API token decides).
//!
//! One addition to hyper: it answers a request line longer than it parses (64 KiB) with a bare
//! `414 URI Too Long` before any router sees it; the API promises `{"error": ...}` on every
//! answer. So each connection is read through [`Guarded`], which answers a request line
//! longer than [`MAX_REQUEST_LINE`] itself, in JSON, and closes the connection.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::Peer;
use axum::Router;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, UnixListener};

/// Longest a client may take over its TLS handshake.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

/// The longest request line accepted (method, path with query, version).
pub const MAX_REQUEST_LINE: usize = 16 * 1024;

/// Serves `router` over TLS (`tls`) on `listener` until the returned future is dropped
/// (its connections end with it).
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, router: Router) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (stream, from) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, say: wait a little rather than spin.
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = conns.join_next() => continue,
        };
        let _ = stream.set_nodelay(true);
        let (acceptor, router) = (acceptor.clone(), router.clone());
        conns.spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_LIMIT, acceptor.accept(stream)).await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::info!("TLS handshake with {from} failed: {e}");
                    return;
                }
                Err(_) => return,
            };
            let peer = Peer::of_certs(stream.get_ref().1.peer_certificates());
            serve_connection(stream, peer, router).await;
        });
    }
}

/// Serves `router` on the agent's Unix socket: the peer is the local user its credentials
/// (`SO_PEERCRED`) name.
pub async fn serve_local(listener: UnixListener, router: Router) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("cannot accept a local connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = conns.join_next() => continue,
        };
        let peer = match stream.peer_cred() {
            Ok(cred) => Peer::Local { uid: cred.uid() },
            Err(_) => Peer::Anonymous,
        };
        conns.spawn(serve_connection(stream, peer, router.clone()));
    }
}

async fn serve_connection<S>(stream: S, peer: Peer, router: Router)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(peer.clone());
            let mut router = router.clone();
            async move { tower_service::Service::call(&mut router, req).await }
        });
    let io = TokioIo::new(Guarded::new(stream));
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await;
}

/// A connection whose request lines are checked for length as they are read (see the
/// module's documentation). A request starts at the beginning of the connection and after
/// every response; clients of this API do not pipeline.
struct Guarded<S> {
    inner: S,
    /// Reading the request line of a request.
    at_line: bool,
    /// Bytes of that line seen so far.
    line_len: usize,
    /// The refusal still to be written, then the connection ends.
    refusal: Option<(Vec<u8>, usize)>,
    /// Refusing: the rest of the request's head still to be read (and dropped) first, so
    /// that closing with unread data does not reset the connection under the answer. The
    /// last three bytes seen (the blank line that ends the head may straddle two reads), and
    /// how much was dropped.
    discarding: Option<(Vec<u8>, usize)>,
}

/// Most of an over-long request's head read and dropped before the refusal goes out anyway.
const MAX_DISCARD: usize = 4 << 20;

impl<S: AsyncRead + AsyncWrite + Unpin> Guarded<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            at_line: true,
            line_len: 0,
            refusal: None,
            discarding: None,
        }
    }

    fn refusal_bytes() -> Vec<u8> {
        let body = serde_json::json!({
            "error": format!(
                "request line longer than {MAX_REQUEST_LINE} bytes: shorten the path or query"
            )
        })
        .to_string();
        format!(
            "HTTP/1.1 414 URI Too Long\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    /// Drops `got` of an over-long request's head; true once the head has ended (or too much
    /// was dropped): the refusal is then due.
    fn discard(&mut self, got: &[u8]) -> bool {
        let Some((tail, dropped)) = &mut self.discarding else {
            return true;
        };
        let mut window = std::mem::take(tail);
        window.extend_from_slice(got);
        *dropped += got.len();
        let ended = window.windows(4).any(|w| w == b"\r\n\r\n") || *dropped > MAX_DISCARD;
        *tail = window[window.len().saturating_sub(3)..].to_vec();
        if ended {
            self.discarding = None;
            self.refusal = Some((Self::refusal_bytes(), 0));
        }
        ended
    }

    /// Writes what is left of the refusal; ready once it is all out.
    fn flush_refusal(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, sent)) = &mut self.refusal {
            if *sent == bytes.len() {
                return Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*sent..]) {
                Poll::Ready(Ok(n)) => *sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.discarding.is_some() {
            let mut scratch = [0u8; 8192];
            loop {
                let mut rb = ReadBuf::new(&mut scratch);
                let ended = match Pin::new(&mut self.inner).poll_read(cx, &mut rb) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(_)) => true,
                    Poll::Ready(Ok(())) if rb.filled().is_empty() => true,
                    Poll::Ready(Ok(())) => {
                        let got = rb.filled().to_vec();
                        self.discard(&got)
                    }
                };
                if ended {
                    break;
                }
            }
        }
        if self.refusal.is_some() {
            // Answered: the connection ends once the answer is out.
            return match self.flush_refusal(cx) {
                Poll::Ready(_) => Poll::Ready(Ok(())),
                Poll::Pending => Poll::Pending,
            };
        }
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        if !this.at_line {
            return Poll::Ready(Ok(()));
        }
        let new = &buf.filled()[before..];
        match new.iter().position(|b| *b == b'\n') {
            Some(i) if this.line_len + i <= MAX_REQUEST_LINE => {
                this.at_line = false;
                this.line_len = 0;
                Poll::Ready(Ok(()))
            }
            None if this.line_len + new.len() <= MAX_REQUEST_LINE => {
                this.line_len += new.len();
                Poll::Ready(Ok(()))
            }
            _ => {
                // Too long: hyper gets nothing of it (the bytes are taken back); the rest of
                // the head is read and dropped, the client gets a JSON refusal, and the
                // connection ends.
                let got = new.to_vec();
                buf.set_filled(before);
                this.discarding = Some((Vec::new(), 0));
                this.discard(&got);
                self.poll_read(cx, buf)
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        // A response starts going out: the next bytes read begin the next request.
        self.at_line = true;
        self.line_len = 0;
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
