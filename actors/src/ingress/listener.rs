//! Serving an axum router on a TCP listener with the limits `axum::serve` lacks: a header-read
//! timeout, an idle keep-alive timeout and a connection cap shared by both listeners (see
//! [`Connections`]). HTTP/1.1, as before.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::ServiceExt;

use super::connections::{ConnState, Connections};

/// Sent, without reading the request, when every connection is busy with a request.
fn busy_response() -> Vec<u8> {
    let body = r#"{"error":{"code":"busy","message":"every connection ([server] max_connections) is busy with a request; retry later"}}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Accepts connections until `shutdown` turns true, then lets the open ones finish their
/// requests and returns once they are closed. `name` tells the listeners apart in logs.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    conns: Connections,
    name: &'static str,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The registry times headers and idle connections itself (it tells the two apart, which
    // hyper's own header timer does not); hyper's is off so that it cannot cut idle ones short.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true);
    let builder = Arc::new(builder);
    let mut open_tasks = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => break,
            a = listener.accept() => a,
            // Reaps finished connection tasks so the set does not grow.
            Some(_) = open_tasks.join_next(), if !open_tasks.is_empty() => continue,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                on_accept_error(&e, &conns, name).await;
                continue;
            }
        };
        let Some(registration) = conns.admit() else {
            tracing::debug!(
                listener = name,
                "every connection is busy: refusing a new one"
            );
            // One non-blocking attempt: a fresh socket's send buffer is empty, and a client
            // that cannot take 200 bytes at once is not worth waiting for.
            let _ = stream.try_write(&busy_response());
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let builder = builder.clone();
        let mut shutdown = shutdown.clone();
        open_tasks.spawn(async move {
            let state = registration.state.clone();
            let io = TokioIo::new(Tracked {
                stream,
                state: state.clone(),
            });
            let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let guard = state.begin_request();
                let router = router.clone();
                async move {
                    let resp = router
                        .oneshot(req.map(Body::new))
                        .await
                        .unwrap_or_else(|never| match never {});
                    // The connection counts as busy until the response body is sent or dropped.
                    Ok::<_, std::convert::Infallible>(resp.map(|body| {
                        Body::new(body.map_frame(move |frame| {
                            let _ = &guard;
                            frame
                        }))
                    }))
                }
            });
            let conn = builder.serve_connection(io, service);
            tokio::pin!(conn);
            let closed = registration.state.clone();
            let mut draining = false;
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::trace!(error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    // Timed out or shed: dropping the connection closes the socket.
                    _ = closed.closed() => break,
                    _ = shutdown.wait_for(|s| *s), if !draining => {
                        // A connection without a request in progress has nothing to finish.
                        if !closed.is_busy() {
                            break;
                        }
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(registration);
        });
    }
    // Stop accepting, let open requests finish (idle connections close at once).
    drop(listener);
    while open_tasks.join_next().await.is_some() {}
}

/// Out of file descriptors: close the oldest idle or slow connection and retry shortly. Other
/// accept errors concern one client (it reset before being accepted) and are skipped.
async fn on_accept_error(e: &io::Error, conns: &Connections, name: &'static str) {
    match e.raw_os_error() {
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM) => {
            let shed = conns.shed_one();
            tracing::warn!(
                listener = name,
                error = %e,
                shed,
                "cannot accept a connection: out of file descriptors or memory"
            );
            // Time for the shed connection's task to close its socket.
            tokio::time::sleep(Duration::from_millis(if shed { 10 } else { 100 })).await;
        }
        _ => tracing::debug!(listener = name, error = %e, "accept failed"),
    }
}

/// The client's socket, noting when bytes of a new request arrive.
struct Tracked {
    stream: TcpStream,
    state: Arc<ConnState>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.state.on_read();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
