//! A real Redis Cluster for tests: three masters on loopback ports, each a
//! `redis-server --cluster-enabled yes` in a directory of its own, joined
//! with `redis-cli --cluster create`. Shared by the store's and the
//! server's tests (the server's include this file by path).

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a cluster gets to form, or to come back after a restart.
const READY: Duration = Duration::from_secs(30);

struct Node {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// Three masters holding the 16 384 slots between them.
pub struct RedisCluster {
    nodes: Vec<Node>,
    persistent: bool,
    _dir: tempfile::TempDir,
}

/// A loopback port that is free, and whose cluster bus port (+10 000) is
/// free too.
fn cluster_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("a free port");
        let port = l.local_addr().expect("an address").port();
        if port > 55_000 {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

impl RedisCluster {
    /// Starts the three masters and joins them. With `persistent`, each
    /// keeps an append-only file synced on every write, so a master that
    /// is stopped and started again has lost nothing it acknowledged.
    pub fn start(persistent: bool) -> RedisCluster {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            persistent,
            _dir: dir,
        };
        for i in 0..3 {
            let node_dir = cluster._dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir).expect("a node directory");
            cluster.nodes.push(Node {
                port: cluster_port(),
                dir: node_dir,
                child: None,
            });
        }
        for i in 0..3 {
            cluster.spawn(i);
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed for the cluster tests");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        cluster.wait_ok();
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let persistent = self.persistent;
        let node = &mut self.nodes[i];
        let child = Command::new("redis-server")
            .args(["--port", &node.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ])
            .args(["--cluster-node-timeout", "2000", "--save", ""])
            .args(if persistent {
                ["--appendonly", "yes", "--appendfsync", "always"]
            } else {
                ["--appendonly", "no", "--appendfsync", "no"]
            })
            .arg("--dir")
            .arg(&node.dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed for the cluster tests");
        node.child = Some(child);
        let deadline = Instant::now() + READY;
        while !self.cli(i, &["PING"]).contains("PONG") {
            assert!(Instant::now() < deadline, "node {i} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every running node says the cluster is ok.
    pub fn wait_ok(&self) {
        let deadline = Instant::now() + READY;
        for i in 0..self.nodes.len() {
            if self.nodes[i].child.is_none() {
                continue;
            }
            while !self
                .cli(i, &["CLUSTER", "INFO"])
                .contains("cluster_state:ok")
            {
                assert!(Instant::now() < deadline, "the cluster did not become ok");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// `redis-cli` against node `i`: its output, or "" if it failed.
    pub fn cli(&self, i: usize, args: &[&str]) -> String {
        Command::new("redis-cli")
            .args(["-p", &self.nodes[i].port.to_string()])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// The URL of node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("redis://127.0.0.1:{}", self.nodes[i].port)
    }

    /// Every node's URL.
    pub fn urls(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.url(i)).collect()
    }

    /// How many keys each master holds.
    pub fn keys_per_node(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .map(|i| self.cli(i, &["DBSIZE"]).trim().parse().unwrap_or(0))
            .collect()
    }

    /// Kills node `i` (its slots are then not served).
    pub fn stop(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again on its port and directory: it rejoins with
    /// its slots (and, when persistent, its data).
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.wait_ok();
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i);
        }
    }
}
