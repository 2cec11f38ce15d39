//! The plain TCP copy the replication is compared with (a helper on each host).

use super::*;

pub(crate) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    n
}

// ---------------------------------------------------------------------------------
// the plain copy (this binary as helper, in each namespace)
// ---------------------------------------------------------------------------------

/// What one end of the plain copy reports (one JSON line on stdout).
pub(crate) fn helper_report(bytes: u64, secs: f64, extra: Value) {
    let (cpu, _) = cpu_secs("self");
    let line = json!({"bytes": bytes, "secs": secs, "cpu_secs": cpu, "extra": extra});
    println!("{line}");
}

/// Receiver: accepts one connection on `addr`, writes what arrives into `dest`
/// (created or truncated), fsyncs it, reports.
pub(crate) fn plain_recv(addr: &str, dest: &Path) {
    let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    println!("listening");
    std::io::stdout().flush().expect("stdout");
    let (mut sock, _) = listener.accept().expect("accept");
    let start = Instant::now();
    let mut f = File::create(dest).unwrap_or_else(|e| panic!("create {}: {e}", dest.display()));
    let mut buf = vec![0u8; MIB as usize];
    let mut bytes = 0u64;
    loop {
        let n = match sock.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("read socket: {e}"),
        };
        f.write_all(&buf[..n]).expect("write copy");
        bytes += n as u64;
    }
    let fsync_start = Instant::now();
    f.sync_all().expect("fsync copy");
    let fsync = fsync_start.elapsed().as_secs_f64();
    helper_report(
        bytes,
        start.elapsed().as_secs_f64(),
        json!({"fsync_secs": fsync}),
    );
}

/// Sender: connects to `addr` and writes `files` into the socket, one after the other.
pub(crate) fn plain_send(addr: &str, files: &[String]) {
    let start = Instant::now();
    let mut sock = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let mut buf = vec![0u8; MIB as usize];
    let mut bytes = 0u64;
    for p in files {
        let mut f = File::open(p).unwrap_or_else(|e| panic!("open {p}: {e}"));
        loop {
            let n = read_full(&mut f, &mut buf);
            if n == 0 {
                break;
            }
            sock.write_all(&buf[..n]).expect("write socket");
            bytes += n as u64;
        }
    }
    sock.shutdown(Shutdown::Write).expect("shutdown socket");
    helper_report(bytes, start.elapsed().as_secs_f64(), Value::Null);
}

/// One plain copy of `files` from host 0 to `dest` on host 1.
#[derive(Debug, Clone)]
pub(crate) struct Plain {
    /// From starting the sender to the receiver's fsync returning.
    pub(crate) secs: f64,
    pub(crate) bytes: u64,
    pub(crate) fsync_secs: f64,
    pub(crate) send_cpu: f64,
    pub(crate) recv_cpu: f64,
}

pub(crate) fn helper(ns: &str, args: &[&str]) -> Command {
    let exe = std::env::current_exe().expect("own path");
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .arg(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    c
}

pub(crate) fn plain_copy(cluster: &Cluster, files: &[PathBuf], dest: &Path) -> Plain {
    let addr = format!("{}:{PLAIN_PORT}", cluster.addr(1));
    let dest_s = dest.display().to_string();
    let mut recv = ChildGuard(Some(
        helper(&cluster.netns(1), &[HELPER_RECV, &addr, &dest_s])
            .spawn()
            .expect("spawn plain receiver"),
    ));
    let mut out = BufReader::new(
        recv.0
            .as_mut()
            .and_then(|c| c.stdout.take())
            .expect("receiver stdout"),
    );
    let mut line = String::new();
    out.read_line(&mut line).expect("receiver ready");
    assert_eq!(line.trim(), "listening", "plain receiver did not start");
    let start = Instant::now();
    let mut send_args = vec![HELPER_SEND.to_string(), addr.clone()];
    send_args.extend(files.iter().map(|p| p.display().to_string()));
    let send_args: Vec<&str> = send_args.iter().map(String::as_str).collect();
    let sent = helper(&cluster.netns(0), &send_args)
        .output()
        .expect("run plain sender");
    assert!(sent.status.success(), "plain sender: {}", sent.status);
    let mut rest = String::new();
    out.read_to_string(&mut rest).expect("receiver report");
    let status = recv.take().wait().expect("wait for receiver");
    let secs = start.elapsed().as_secs_f64();
    assert!(status.success(), "plain receiver: {status}");
    let got: Value = serde_json::from_str(rest.trim()).expect("receiver report JSON");
    let sent: Value = serde_json::from_slice(&sent.stdout).expect("sender report JSON");
    assert_eq!(got["bytes"], sent["bytes"], "plain copy lost bytes");
    Plain {
        secs,
        bytes: got["bytes"].as_u64().unwrap_or(0),
        fsync_secs: got["extra"]["fsync_secs"].as_f64().unwrap_or(0.0),
        send_cpu: sent["cpu_secs"].as_f64().unwrap_or(0.0),
        recv_cpu: got["cpu_secs"].as_f64().unwrap_or(0.0),
    }
}

// ---------------------------------------------------------------------------------
// 1. full sync
// ---------------------------------------------------------------------------------
