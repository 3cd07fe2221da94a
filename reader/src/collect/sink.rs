//! The access records of one cycle, encoded into every append-only file as
//! the cycle makes them (a record is in memory only while it is encoded).
//!
//! CSV and JSON Lines are encoded on the calling thread. OTLP logs, the
//! largest output (about 2.6 KB a record), are encoded and written on a
//! second thread fed with batches of records, so that two cores encode and
//! copy into the page cache at once. Every byte is still written before
//! `with_sink` returns, which is before the caller's commit point; a write
//! error on either thread fails the cycle (nothing is committed).

use std::{
    collections::BTreeMap,
    io,
    sync::mpsc::{self, Receiver, SyncSender},
};

use anyhow::Context as _;

use crate::output::{
    access::{self, AccessRecord},
    applog::{AppendLog, Committed, Tail, Written},
    otlp,
};

/// Records per batch handed to the OTLP logs thread.
const BATCH: usize = 512;
/// Batches in rotation: one being filled, the others encoded or queued.
const BATCHES: usize = 3;

/// Which append-only file is which.
pub struct Names<'a> {
    pub csv: &'a str,
    pub jsonl: &'a str,
    pub otlp_logs: &'a str,
}

/// The main thread's side of the OTLP logs thread.
struct LogsFeed {
    batch: Vec<AccessRecord>,
    len: usize,
    allocated: usize,
    to_worker: SyncSender<(Vec<AccessRecord>, usize)>,
    from_worker: Receiver<Vec<AccessRecord>>,
}

impl LogsFeed {
    /// Copies `r` into the batch; hands a full batch over. False once the
    /// worker is gone (it stopped on an error, returned when joined).
    fn push(&mut self, r: &AccessRecord) -> bool {
        if self.len < self.batch.len() {
            self.batch[self.len].copy_from(r);
        } else {
            self.batch.push(r.clone());
        }
        self.len += 1;
        if self.len < BATCH {
            return true;
        }
        self.send()
    }

    fn send(&mut self) -> bool {
        let next = match self.from_worker.try_recv() {
            Ok(b) => b,
            Err(_) if self.allocated < BATCHES => {
                self.allocated += 1;
                Vec::with_capacity(BATCH)
            }
            Err(_) => match self.from_worker.recv() {
                Ok(b) => b,
                Err(_) => return false,
            },
        };
        let full = std::mem::replace(&mut self.batch, next);
        let n = std::mem::replace(&mut self.len, 0);
        self.to_worker.send((full, n)).is_ok()
    }
}

/// The OTLP logs thread: encodes batches into `tail` until the channel
/// closes, then makes the file durable; returns its new position.
fn logs_worker(
    mut tail: Tail<'_>,
    mut w: otlp::LogsWriter<'_>,
    batches: Receiver<(Vec<AccessRecord>, usize)>,
    back: SyncSender<Vec<AccessRecord>>,
) -> io::Result<Option<Written>> {
    for (batch, n) in batches {
        for r in &batch[..n] {
            w.push(tail.buf(), r);
            tail.flush_if_full()?;
        }
        // The main thread may have finished: a closed return channel is fine.
        let _ = back.send(batch);
    }
    w.finish(tail.buf());
    tail.finish()
}

/// Runs `f` with a sink for the cycle's records, appending each to the
/// files in `files` (`known`: what the state knows of each, by file name);
/// returns `f`'s result and the new (uncommitted) position of every file
/// written.
pub fn with_sink<R>(
    files: &[(String, AppendLog)],
    names: &Names<'_>,
    known: &BTreeMap<String, Committed>,
    resource: &otlp::Resource,
    now_ns: u64,
    per_line: usize,
    f: impl FnOnce(&mut dyn FnMut(&AccessRecord)) -> R,
) -> anyhow::Result<(R, BTreeMap<String, Written>)> {
    let tail = |name: &str| {
        files
            .iter()
            .find(|(f, _)| f == name)
            .map(|(f, log)| (f.as_str(), log.tail(known.get(f).copied())))
    };
    let mut csv = tail(names.csv);
    let mut jsonl = tail(names.jsonl);
    let logs = tail(names.otlp_logs);
    std::thread::scope(|s| {
        let mut feed = None;
        let mut worker = None;
        if let Some((file, t)) = logs {
            let (to_worker, batches) = mpsc::sync_channel(BATCHES);
            let (back, from_worker) = mpsc::sync_channel(BATCHES);
            let w = otlp::LogsWriter::new(resource, now_ns, per_line);
            worker = Some((file, s.spawn(move || logs_worker(t, w, batches, back))));
            feed = Some(LogsFeed {
                batch: Vec::with_capacity(BATCH),
                len: 0,
                allocated: 1,
                to_worker,
                from_worker,
            });
        }
        let mut error: Option<anyhow::Error> = None;
        let mut feed_alive = true;
        let result = f(&mut |r| {
            if error.is_some() {
                return;
            }
            let mut res = Ok(());
            if let Some((_, t)) = &mut csv {
                access::csv_row(t.buf(), r);
                res = res.and_then(|()| t.flush_if_full());
            }
            if let Some((_, t)) = &mut jsonl {
                access::jsonl_line(t.buf(), r);
                res = res.and_then(|()| t.flush_if_full());
            }
            if let Err(e) = res {
                error = Some(anyhow::Error::new(e).context("cannot append an access record"));
            }
            if let Some(feed) = &mut feed {
                feed_alive = feed_alive && feed.push(r);
            }
        });
        // Hand over the last, partial batch and close the channel.
        if let Some(mut feed) = feed {
            if feed_alive && feed.len > 0 {
                feed.send();
            }
        }
        let mut out = BTreeMap::new();
        let mut first_err = error;
        if let Some((file, handle)) = worker {
            match handle.join() {
                Ok(Ok(Some(w))) => {
                    out.insert(file.to_owned(), w);
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    first_err.get_or_insert(
                        anyhow::Error::new(e).context(format!("cannot append to {file}")),
                    );
                }
                Err(_) => {
                    first_err.get_or_insert(anyhow::anyhow!("the {file} encoder panicked"));
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        for (file, t) in [csv, jsonl].into_iter().flatten() {
            if let Some(w) = t
                .finish()
                .with_context(|| format!("cannot append to {file}"))?
            {
                out.insert(file.to_owned(), w);
            }
        }
        Ok((result, out))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::access::testdata::realistic;

    const NOW: u64 = 1_764_000_000_000_000_000;

    fn log(dir: &std::path::Path, name: &str, header: Vec<u8>) -> (String, AppendLog) {
        let log = AppendLog {
            path: dir.join(name),
            max_bytes: u64::MAX,
            keep: 1,
            header,
            mode: 0o640,
        };
        (name.to_owned(), log)
    }

    /// Streamed through the sink (and the OTLP thread), every file holds
    /// exactly what the whole-batch encoders write, for counts around the
    /// batch and line sizes.
    #[test]
    fn files_equal_the_batch_encoders() {
        let res = otlp::Resource {
            host_name: "h".into(),
        };
        let names = Names {
            csv: "a.csv",
            jsonl: "a.jsonl",
            otlp_logs: "l.jsonl",
        };
        for n in [0usize, 1, BATCH - 1, BATCH, BATCH + 1, 3 * BATCH + 7, 2500] {
            let d = tempfile::tempdir().unwrap();
            let files = vec![
                log(d.path(), "a.csv", access::csv_header()),
                log(d.path(), "a.jsonl", Vec::new()),
                log(d.path(), "l.jsonl", Vec::new()),
            ];
            let records: Vec<AccessRecord> = (0..n as u64).map(realistic).collect();
            let (count, lens) =
                with_sink(&files, &names, &BTreeMap::new(), &res, NOW, 1000, |emit| {
                    for r in &records {
                        emit(r);
                    }
                    records.len()
                })
                .unwrap();
            assert_eq!(count, n);
            let mut csv = access::csv_header();
            csv.extend(access::encode_csv(&records));
            let mut logs = Vec::new();
            for chunk in records.chunks(1000) {
                logs.extend_from_slice(otlp::logs_request(chunk, &res, NOW).unwrap().as_bytes());
                logs.push(b'\n');
            }
            let read = |f: &str| std::fs::read(d.path().join(f)).unwrap_or_default();
            if n == 0 {
                assert!(lens.is_empty(), "nothing written");
                continue;
            }
            for (_, log) in &files {
                log.publish().unwrap();
            }
            assert_eq!(read("a.csv"), csv, "{n}");
            assert_eq!(read("a.jsonl"), access::encode_jsonl(&records), "{n}");
            assert_eq!(read("l.jsonl"), logs, "{n}");
            assert_eq!(lens["l.jsonl"].pos.len, logs.len() as u64);
        }
    }

    /// A file that cannot be written fails the cycle with its name, from
    /// either thread, without hanging.
    #[test]
    fn a_write_error_fails_naming_the_file() {
        let res = otlp::Resource {
            host_name: "h".into(),
        };
        let names = Names {
            csv: "a.csv",
            jsonl: "a.jsonl",
            otlp_logs: "l.jsonl",
        };
        for bad in ["a.csv", "l.jsonl"] {
            let d = tempfile::tempdir().unwrap();
            std::fs::create_dir(d.path().join(bad)).unwrap();
            let files = vec![
                log(d.path(), "a.csv", access::csv_header()),
                log(d.path(), "l.jsonl", Vec::new()),
            ];
            let records: Vec<AccessRecord> = (0..5000).map(realistic).collect();
            let e = with_sink(&files, &names, &BTreeMap::new(), &res, NOW, 1000, |emit| {
                for r in &records {
                    emit(r);
                }
            })
            .unwrap_err();
            assert!(format!("{e:#}").contains(bad), "{e:#}");
        }
    }
}
