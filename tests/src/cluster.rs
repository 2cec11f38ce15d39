//! Several hosts on one machine: network namespaces joined by a bridge, each with its
//! own address, so that daemons talk over real (virtual) links that a test can slow
//! down or cut. Everything is removed when the [`Cluster`] is dropped.

use std::process::Command;

/// Runs a command and panics with its output when it fails.
pub fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Network namespaces `<tag>-0`, `<tag>-1`, … on a bridge, host `i` at
/// `10.<net>.0.<i + 1>/24`.
#[derive(Debug)]
pub struct Cluster {
    tag: String,
    net: u8,
    hosts: usize,
}

impl Cluster {
    /// Creates `hosts` namespaces on a fresh bridge. `net` (1..=254) picks the
    /// subnet; tests running at once use different ones.
    pub fn new(hosts: usize, net: u8) -> Cluster {
        crate::require_root();
        let tag = format!("stw{}", std::process::id() % 100_000);
        let mut c = Cluster { tag, net, hosts: 0 };
        run("ip", &["link", "add", &c.bridge(), "type", "bridge"]);
        run("ip", &["link", "set", &c.bridge(), "up"]);
        for i in 0..hosts {
            let ns = c.netns(i);
            run("ip", &["netns", "add", &ns]);
            c.hosts = i + 1;
            let (outside, inside) = (c.veth(i), format!("{}i{i}", c.tag));
            run(
                "ip",
                &[
                    "link", "add", &outside, "type", "veth", "peer", "name", &inside,
                ],
            );
            run(
                "ip",
                &["link", "set", &outside, "master", &c.bridge(), "up"],
            );
            run("ip", &["link", "set", &inside, "netns", &ns]);
            let exec = |args: &[&str]| {
                let mut all = vec!["netns", "exec", ns.as_str()];
                all.extend_from_slice(args);
                run("ip", &all);
            };
            exec(&["ip", "link", "set", "lo", "up"]);
            exec(&["ip", "link", "set", &inside, "name", "eth0"]);
            exec(&[
                "ip",
                "addr",
                "add",
                &format!("{}/24", c.addr(i)),
                "dev",
                "eth0",
            ]);
            exec(&["ip", "link", "set", "eth0", "up"]);
        }
        c
    }

    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }

    /// The host-side end of host `i`'s link.
    pub fn veth(&self, i: usize) -> String {
        format!("{}h{i}", self.tag)
    }

    /// Host `i`'s namespace name.
    pub fn netns(&self, i: usize) -> String {
        format!("{}-{i}", self.tag)
    }

    /// Host `i`'s address.
    pub fn addr(&self, i: usize) -> String {
        format!("10.{}.0.{}", self.net, i + 1)
    }

    /// The command prefix that runs a program in host `i`'s network namespace (and
    /// nothing else of it: mounts stay visible to the test).
    pub fn prefix(&self, i: usize) -> Vec<String> {
        vec![
            "nsenter".into(),
            format!("--net=/run/netns/{}", self.netns(i)),
            "--".into(),
        ]
    }

    /// Takes host `i`'s link down (packets are dropped, connections see no reset).
    pub fn link_down(&self, i: usize) {
        run("ip", &["link", "set", &self.veth(i), "down"]);
    }

    /// Brings host `i`'s link back.
    pub fn link_up(&self, i: usize) {
        run("ip", &["link", "set", &self.veth(i), "up"]);
    }

    /// Limits what host `i` sends to `rate` (tc syntax, e.g. `80mbit`).
    pub fn limit_egress(&self, i: usize, rate: &str) {
        run(
            "ip",
            &[
                "netns",
                "exec",
                &self.netns(i),
                "tc",
                "qdisc",
                "replace",
                "dev",
                "eth0",
                "root",
                "tbf",
                "rate",
                rate,
                "burst",
                "256kb",
                "latency",
                "400ms",
            ],
        );
    }

    /// Removes host `i`'s rate limit.
    pub fn unlimit(&self, i: usize) {
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns(i),
                "tc",
                "qdisc",
                "del",
                "dev",
                "eth0",
                "root",
            ])
            .output();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.hosts {
            // Deleting the namespace deletes its veth end, and so the pair.
            let _ = Command::new("ip")
                .args(["netns", "del", &self.netns(i)])
                .output();
            let _ = Command::new("ip")
                .args(["link", "del", &self.veth(i)])
                .output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .output();
    }
}
