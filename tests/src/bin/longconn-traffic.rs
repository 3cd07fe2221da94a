//! Traffic generator for longconn's end-to-end tests: real TCP connections on
//! loopback whose every byte is accounted for, driven line by line on stdin so
//! a test decides when data moves and when sockets close.
//!
//! Commands (one per line) and their one-line JSON answers on stdout:
//!   pair NAME 4|6 [ADDR [PORT]]  open a listener (on PORT, else any
//!                          free port) and one connection to it
//!                          -> {"name","client_port","server_port","addr"}
//!   send NAME c2s|s2c N    write N bytes from one end; the other end reads
//!                          all of them -> {"name","dir","bytes","total"}
//!   close NAME             close client then server -> {"name","closed":true}
//!   fail PORT [ADDR]       connect to a closed port -> {"failed":true,"port"}
//!   churn N [ADDR]         open, send 1000 bytes each way, close, N times
//!                          -> {"churn":N,"bytes_each_way":1000}
//!   bpair NAME ADDR CDEV SDEV  like `pair` over IPv4 ADDR, the client bound
//!                          to device CDEV and the listener to SDEV before
//!                          they connect (SO_BINDTODEVICE)
//!                          -> {"name","client_port","server_port","addr"}
//!   pairs PREFIX N 4|6     N pairs named PREFIX0..PREFIX<N-1> on one listener
//!                          -> {"pairs":N}
//!   pump PREFIX N          send N bytes c2s on every pair named PREFIX*
//!                          -> {"pumped":pairs,"bytes":N}
//!   listen 4|6 [ADDR]      a listener that accepts in the background and
//!                          reads each connection until EOF -> {"port":P}
//!   storm SECS ADDR        for SECS seconds, as fast as one thread can:
//!                          connect, 100 bytes each way, the client closes
//!                          with SO_LINGER 0 (a reset: no TIME_WAIT), the
//!                          server once it has seen the reset; sums each
//!                          socket's own tcp_info at its close ->
//!                          {"storm":N,"port","client_acked",
//!                          "client_received","server_acked","server_received"}
//!   exit
//! Any error is printed as {"error": "..."} and the process exits 1.

use std::{
    collections::HashMap,
    io::{BufRead, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    thread,
};

struct Pair {
    client: TcpStream,
    server: TcpStream,
    c2s: u64,
    s2c: u64,
}

fn read_exact_n(mut s: TcpStream, n: u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = n;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let got = s.read(&mut buf[..want])?;
        if got == 0 {
            return Err(std::io::Error::other("peer closed early"));
        }
        left -= got as u64;
    }
    Ok(())
}

fn send(from: &mut TcpStream, to: &TcpStream, n: u64) -> std::io::Result<()> {
    let reader = to.try_clone()?;
    let handle = thread::spawn(move || read_exact_n(reader, n));
    let chunk = vec![b'x'; 64 * 1024];
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk.len() as u64) as usize;
        from.write_all(&chunk[..k])?;
        left -= k as u64;
    }
    handle
        .join()
        .map_err(|_| std::io::Error::other("reader thread panicked"))?
}

fn loopback(family: &str, addr: Option<&str>) -> String {
    match (family, addr) {
        (_, Some(a)) => a.to_owned(),
        ("6", None) => "::1".to_owned(),
        _ => "127.0.0.1".to_owned(),
    }
}

fn bind(addr: &str) -> std::io::Result<TcpListener> {
    bind_port(addr, 0)
}

fn bind_port(addr: &str, port: u16) -> std::io::Result<TcpListener> {
    if addr.contains(':') {
        TcpListener::bind(format!("[{addr}]:{port}"))
    } else {
        TcpListener::bind(format!("{addr}:{port}"))
    }
}

/// SO_BINDTODEVICE: the socket sends and receives through `dev` only.
fn bind_to_device(fd: RawFd, dev: &str) -> std::io::Result<()> {
    // SAFETY: setsockopt on an open socket with a buffer of dev.len() bytes.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            dev.as_ptr().cast(),
            dev.len() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A connection to IPv4 `to` from a socket bound to device `dev` before connect().
fn connect_bound(to: SocketAddr, dev: &str) -> std::io::Result<TcpStream> {
    let SocketAddr::V4(to) = to else {
        return Err(std::io::Error::other("bpair is IPv4 only"));
    };
    // SAFETY: socket() has no preconditions.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh socket that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    bind_to_device(sock.as_raw_fd(), dev)?;
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(to.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: connect on an open socket with a sockaddr_in of its size.
    let rc = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(TcpStream::from(sock))
}

/// `n` connections to `listener`: open, 1000 bytes each way, close.
fn churn(listener: &TcpListener, n: &str) -> Result<Option<String>, String> {
    let e = |err: std::io::Error| err.to_string();
    let n: u64 = n.parse().map_err(|_| format!("bad count {n}"))?;
    let target = listener.local_addr().map_err(e)?;
    for _ in 0..n {
        let mut c = TcpStream::connect(target).map_err(e)?;
        let (mut s, _) = listener.accept().map_err(e)?;
        send(&mut c, &s, 1000).map_err(e)?;
        send(&mut s, &c, 1000).map_err(e)?;
    }
    Ok(Some(format!(
        r#"{{"churn":{n},"bytes_each_way":1000,"port":{}}}"#,
        target.port()
    )))
}

/// One socket's (tcpi_bytes_acked, tcpi_bytes_received), from the kernel.
fn tcp_bytes(s: &TcpStream) -> std::io::Result<(u64, u64)> {
    // SAFETY: tcp_info is plain data; zeroed is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt on an open socket with a buffer of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((info.tcpi_bytes_acked, info.tcpi_bytes_received))
}

/// SO_LINGER 0: close() sends a reset and leaves no TIME_WAIT.
fn linger_zero(s: &TcpStream) -> std::io::Result<()> {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open socket with a valid `linger` value.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `storm SECS ADDR` (see the module doc). Each socket's tcp_info is read
/// when nothing more can reach it: the client's after the server's answer
/// (which acknowledged its data) and before its reset, the server's after
/// the reset, so the sums are the connections' final counters.
fn storm(secs: &str, addr: &str) -> Result<Option<String>, String> {
    let e = |err: std::io::Error| err.to_string();
    let secs: f64 = secs.parse().map_err(|_| format!("bad duration {secs}"))?;
    let listener = bind(addr).map_err(e)?;
    let target = listener.local_addr().map_err(e)?;
    let payload = [b'x'; 100];
    let mut buf = [0u8; 100];
    let (mut n, mut sums) = (0u64, [0u64; 4]);
    let until = std::time::Instant::now() + std::time::Duration::from_secs_f64(secs);
    while std::time::Instant::now() < until {
        let mut c = TcpStream::connect(target).map_err(e)?;
        let (mut s, _) = listener.accept().map_err(e)?;
        c.write_all(&payload).map_err(e)?;
        s.read_exact(&mut buf).map_err(e)?;
        s.write_all(&payload).map_err(e)?;
        c.read_exact(&mut buf).map_err(e)?;
        let (ca, cr) = tcp_bytes(&c).map_err(e)?;
        linger_zero(&c).map_err(e)?;
        drop(c);
        // Wait for the reset (EOF or ECONNRESET), then the final values.
        let _ = s.read(&mut buf);
        let (sa, sr) = tcp_bytes(&s).map_err(e)?;
        drop(s);
        for (acc, v) in sums.iter_mut().zip([ca, cr, sa, sr]) {
            *acc += v;
        }
        n += 1;
    }
    Ok(Some(format!(
        r#"{{"storm":{n},"port":{},"client_acked":{},"client_received":{},"server_acked":{},"server_received":{}}}"#,
        target.port(),
        sums[0],
        sums[1],
        sums[2],
        sums[3]
    )))
}

/// Keeps a connected pair under `name`; its reply line names the ports.
fn keep_pair(
    pairs: &mut HashMap<String, Pair>,
    name: &str,
    client: TcpStream,
    server: TcpStream,
    server_port: u16,
    addr: &str,
) -> Result<Option<String>, String> {
    let client_port = client.local_addr().map_err(|x| x.to_string())?.port();
    pairs.insert(
        name.to_string(),
        Pair {
            client,
            server,
            c2s: 0,
            s2c: 0,
        },
    );
    Ok(Some(format!(
        r#"{{"name":"{name}","client_port":{client_port},"server_port":{server_port},"addr":"{addr}"}}"#
    )))
}

fn run(
    line: &str,
    pairs: &mut HashMap<String, Pair>,
    kept: &mut Option<TcpListener>,
) -> Result<Option<String>, String> {
    let w: Vec<&str> = line.split_whitespace().collect();
    let e = |x: std::io::Error| x.to_string();
    match w.as_slice() {
        ["pair", name, family, rest @ ..] => {
            let addr = loopback(family, rest.first().copied());
            let port = match rest.get(1) {
                Some(p) => p.parse().map_err(|_| format!("bad port {p}"))?,
                None => 0,
            };
            let listener = bind_port(&addr, port).map_err(e)?;
            let port = listener.local_addr().map_err(e)?.port();
            let client = TcpStream::connect(listener.local_addr().map_err(e)?).map_err(e)?;
            let (server, _) = listener.accept().map_err(e)?;
            keep_pair(pairs, name, client, server, port, &addr)
        }
        ["bpair", name, addr, cdev, sdev] => {
            let listener = bind(addr).map_err(e)?;
            bind_to_device(listener.as_raw_fd(), sdev).map_err(e)?;
            let target = listener.local_addr().map_err(e)?;
            let client = connect_bound(target, cdev).map_err(e)?;
            let (server, _) = listener.accept().map_err(e)?;
            keep_pair(pairs, name, client, server, target.port(), addr)
        }
        ["send", name, dir, n] => {
            let n: u64 = n.parse().map_err(|_| format!("bad byte count {n}"))?;
            let p = pairs.get_mut(*name).ok_or(format!("no pair {name}"))?;
            let total = match *dir {
                "c2s" => {
                    send(&mut p.client, &p.server, n).map_err(e)?;
                    p.c2s += n;
                    p.c2s
                }
                "s2c" => {
                    send(&mut p.server, &p.client, n).map_err(e)?;
                    p.s2c += n;
                    p.s2c
                }
                other => return Err(format!("bad direction {other}")),
            };
            Ok(Some(format!(
                r#"{{"name":"{name}","dir":"{dir}","bytes":{n},"total":{total}}}"#
            )))
        }
        ["close", name] => {
            let p = pairs.remove(*name).ok_or(format!("no pair {name}"))?;
            let _ = p.client.shutdown(Shutdown::Both);
            drop(p.client);
            let _ = p.server.shutdown(Shutdown::Both);
            drop(p.server);
            Ok(Some(format!(r#"{{"name":"{name}","closed":true}}"#)))
        }
        ["fail", port, rest @ ..] => {
            let addr = loopback("4", rest.first().copied());
            let target = if addr.contains(':') {
                format!("[{addr}]:{port}")
            } else {
                format!("{addr}:{port}")
            };
            let failed = TcpStream::connect(&target).is_err();
            Ok(Some(format!(r#"{{"failed":{failed},"port":{port}}}"#)))
        }
        ["churnkeep", n] => {
            if kept.is_none() {
                *kept = Some(bind(&loopback("4", None)).map_err(e)?);
            }
            churn(kept.as_ref().ok_or("no listener")?, n)
        }
        ["storm", secs, addr] => storm(secs, addr),
        ["churn", n, rest @ ..] => {
            churn(&bind(&loopback("4", rest.first().copied())).map_err(e)?, n)
        }
        ["pairs", prefix, n, family] => {
            let n: usize = n.parse().map_err(|_| format!("bad count {n}"))?;
            let listener = bind(&loopback(family, None)).map_err(e)?;
            let target = listener.local_addr().map_err(e)?;
            for i in 0..n {
                let client = TcpStream::connect(target).map_err(e)?;
                let (server, _) = listener.accept().map_err(e)?;
                pairs.insert(
                    format!("{prefix}{i}"),
                    Pair {
                        client,
                        server,
                        c2s: 0,
                        s2c: 0,
                    },
                );
            }
            Ok(Some(format!(r#"{{"pairs":{n},"port":{}}}"#, target.port())))
        }
        ["pump", prefix, n] => {
            let n: u64 = n.parse().map_err(|_| format!("bad byte count {n}"))?;
            let mut count = 0;
            for (name, p) in pairs.iter_mut() {
                if name.starts_with(prefix) {
                    send(&mut p.client, &p.server, n).map_err(e)?;
                    p.c2s += n;
                    count += 1;
                }
            }
            Ok(Some(format!(r#"{{"pumped":{count},"bytes":{n}}}"#)))
        }
        ["listen", family, rest @ ..] => {
            let addr = loopback(family, rest.first().copied());
            let listener = bind(&addr).map_err(e)?;
            let port = listener.local_addr().map_err(e)?.port();
            thread::spawn(move || {
                for conn in listener.incoming().flatten() {
                    thread::spawn(move || {
                        let mut conn = conn;
                        let mut buf = [0u8; 65536];
                        while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
                    });
                }
            });
            Ok(Some(format!(r#"{{"port":{port},"addr":"{addr}"}}"#)))
        }
        ["exit"] => Ok(None),
        _ => Err(format!("unknown command: {line}")),
    }
}

fn main() {
    let mut pairs = HashMap::new();
    let mut kept = None;
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        match run(line.trim(), &mut pairs, &mut kept) {
            Ok(Some(answer)) => {
                let _ = writeln!(out, "{answer}");
                let _ = out.flush();
            }
            Ok(None) => break,
            Err(msg) => {
                let _ = writeln!(out, "{}", serde_json::json!({ "error": msg }));
                std::process::exit(1);
            }
        }
    }
}
