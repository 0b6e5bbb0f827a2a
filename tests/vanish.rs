//! A subscriber whose network disappears without FIN or RST, on a test host in a network
//! namespace made for the test: the server notices within the heartbeat plus the timeout.
//!
//! Needs root for `ip netns` and veth links, as CI has; without them the test fails and says
//! why.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use hubcast::server::SOCKET_TIMEOUT_MARGIN;

/// A network namespace joined to the host by a veth pair, removed on drop.
struct TestHost {
    namespace: String,
    host_link: String,
    inner_link: String,
    host_addr: Ipv4Addr,
}

fn ip(args: &[&str]) {
    let status = Command::new("ip")
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("cannot run `ip {}`: {e}", args.join(" ")));
    assert!(
        status.success(),
        "`ip {}` failed: this test needs root and iproute2 to make a test host",
        args.join(" ")
    );
}

impl TestHost {
    fn create() -> Self {
        let id = std::process::id() % 10_000;
        let namespace = format!("hubcast-test-{id}");
        let host_link = format!("hcv{id}a");
        let inner_link = format!("hcv{id}b");
        let subnet = (id % 250) as u8 + 1;
        let host_addr = Ipv4Addr::new(10, 203, subnet, 1);
        let inner_addr = format!("10.203.{subnet}.2/30");
        // Leftovers of an earlier run that was killed would make the names clash.
        let _ = Command::new("ip")
            .args(["netns", "del", &namespace])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &host_link])
            .status();

        ip(&["netns", "add", &namespace]);
        ip(&[
            "link",
            "add",
            &host_link,
            "type",
            "veth",
            "peer",
            "name",
            &inner_link,
        ]);
        ip(&["link", "set", &inner_link, "netns", &namespace]);
        ip(&["addr", "add", &format!("{host_addr}/30"), "dev", &host_link]);
        ip(&["link", "set", &host_link, "up"]);
        let inside = ["netns", "exec", &namespace, "ip"];
        ip(&[
            &inside[..],
            &["addr", "add", &inner_addr, "dev", &inner_link],
        ]
        .concat());
        ip(&[&inside[..], &["link", "set", &inner_link, "up"]].concat());
        Self {
            namespace,
            host_link,
            inner_link,
            host_addr,
        }
    }

    /// Runs a command inside the namespace.
    fn spawn(&self, program: &str, args: &[&str]) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.namespace, program])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a client in the test host")
    }

    /// Takes the test host's link down: packets stop flowing and nothing tells the server.
    fn vanish(&self) {
        ip(&[
            "netns",
            "exec",
            &self.namespace,
            "ip",
            "link",
            "set",
            &self.inner_link,
            "down",
        ]);
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_link])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.namespace])
            .status();
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn vanished_sse_subscriber_is_freed() {
    let host = TestHost::create();
    let heartbeat = Duration::from_millis(300);
    let write_timeout = Duration::from_secs(1);
    let server = TestServer::start_with(|c| {
        c.http_listen = vec![SocketAddr::from((host.host_addr, 0))];
        c.heartbeat = heartbeat;
        c.write_timeout = write_timeout;
    })
    .await;
    let url = format!("http://{}/v1/events?topic=v", server.http);
    let _client = Killed(host.spawn("curl", &["-sN", &url]));
    server.wait_subscribers(1).await;

    host.vanish();
    let cut = Instant::now();
    server.wait_subscribers(0).await;
    // Heartbeats go unacknowledged, and TCP_USER_TIMEOUT (the write timeout plus the socket
    // margin) aborts the connection; two seconds of slack cover scheduling.
    let bound = heartbeat + write_timeout + SOCKET_TIMEOUT_MARGIN + Duration::from_secs(2);
    assert!(cut.elapsed() < bound, "freed after {:?}", cut.elapsed());
}
