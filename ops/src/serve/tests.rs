//! The accept loop's cap, header deadline and shutdown, over loopback.

use std::convert::Infallible;

use hyper::service::service_fn;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::task::JoinHandle;

use super::*;

struct Running {
    address: SocketAddr,
    serving: Serving,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

async fn start(max_connections: usize, header_timeout: Duration) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("binding loopback: {e}"));
    let address = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("bound: {e}"));
    let serving = Serving {
        max_connections,
        header_timeout,
        drain_timeout: Some(Duration::from_secs(5)),
        open: IntGauge::new("open", "open").unwrap_or_else(|e| panic!("constant: {e}")),
        refused: IntCounter::new("refused", "refused").unwrap_or_else(|e| panic!("constant: {e}")),
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(accept(
        listener,
        serving.clone(),
        stop.clone(),
        |_, _| {},
        {
            let stop = stop.clone();
            move |tcp, _| {
                let stop = stop.clone();
                async move {
                    let service =
                        service_fn(|_| async { Ok::<_, Infallible>(text(StatusCode::OK, "ok\n")) });
                    connection(tcp, service, header_timeout, &stop).await;
                }
            }
        },
    ));
    Running {
        address,
        serving,
        stop,
        task,
    }
}

/// Polls `check` until it holds, for at most 10 s.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn get(address: SocketAddr) -> String {
    let mut tcp = TcpStream::connect(address)
        .await
        .unwrap_or_else(|e| panic!("connecting: {e}"));
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap_or_else(|e| panic!("writing: {e}"));
    let mut answer = String::new();
    let _ = tcp.read_to_string(&mut answer).await;
    answer
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_and_counted() {
    let server = start(2, Duration::from_secs(10)).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(
            TcpStream::connect(server.address)
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    let open = server.serving.open.clone();
    eventually("2 open connections", || open.get() == 2).await;

    let mut third = TcpStream::connect(server.address)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), third.read(&mut byte))
        .await
        .unwrap_or_else(|_| panic!("the third connection was neither closed nor answered"));
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eq!(server.serving.refused.get(), 1);

    held.pop();
    eventually("a connection to close", || open.get() == 1).await;
    assert!(get(server.address).await.starts_with("HTTP/1.1 200"));
    assert_eq!(server.serving.refused.get(), 1);

    drop(held);
    server.stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), server.task)
        .await
        .unwrap_or_else(|_| panic!("the loop did not end after stop"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(open.get(), 0);
}

/// Paused time: a client that never sends its headers is closed once the
/// header deadline passes, and not before.
#[tokio::test(start_paused = true)]
async fn silent_clients_are_closed_at_the_header_deadline() {
    let server = start(4, Duration::from_secs(10)).await;
    let started = tokio::time::Instant::now();
    let mut silent = TcpStream::connect(server.address)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut buf = Vec::new();
    let _ = silent.read_to_end(&mut buf).await;
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(10), "closed after {waited:?}");
    assert!(waited < Duration::from_secs(60), "closed after {waited:?}");
    let open = server.serving.open.clone();
    eventually("the connection to be forgotten", || open.get() == 0).await;
    server.stop.cancel();
    let _ = server.task.await;
}

#[tokio::test]
async fn stop_ends_the_loop_and_closes_the_listener() {
    let server = start(4, Duration::from_secs(10)).await;
    assert!(get(server.address).await.contains("ok"));
    server.stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), server.task)
        .await
        .unwrap_or_else(|_| panic!("the loop did not end after stop"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(TcpStream::connect(server.address).await.is_err());
}
