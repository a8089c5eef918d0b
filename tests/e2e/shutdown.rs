//! Graceful shutdown: on SIGTERM the gateway stops accepting, finishes the
//! requests in flight, and exits 0.

use crate::support::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_in_flight_then_exits_zero() {
    let up = Upstream::start("up").await;
    let mut gw = Gateway::start(&format!(
        "{}\n[[pools]]\nname = \"up\"\ntargets = [\"{}\"]\n[[routes]]\nname = \"all\"\npath = \"/\"\npools = [\"up\"]\n",
        config_head().replacen("[gateway]", "[gateway]\nshutdown_grace_ms = 10000", 1),
        up.addr
    ));
    let url = gw.url("/slow/1000");
    let in_flight = tokio::spawn(async move { get(&url, &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    std::process::Command::new("kill").args(["-TERM", &gw.child.id().to_string()]).status().unwrap();

    // The request in flight is answered in full.
    let a = in_flight.await.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["path"], "/slow/1000");

    // New connections are refused once the listener has closed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(tokio::net::TcpStream::connect(gw.addr).await.is_err(), "the listener still accepts after SIGTERM");

    // And the process exits 0 by itself, well within the grace period.
    let mut status = None;
    for _ in 0..100 {
        if let Some(s) = gw.child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = status.expect("the gateway did not exit within 5 s of its last request");
    assert!(status.success(), "exit status {status}");
    assert!(started.elapsed() < Duration::from_secs(8));
}
