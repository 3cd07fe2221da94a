//! The state's journal: what changed each cycle since the base
//! (`state.bin`), so that a cycle writes the connections that changed
//! rather than all of them.
//!
//! ```text
//! header  16 B magic "longconn journal", u32 version 1, u32 0,
//!         u64 generation (the base's)
//! entry   u32 "LCJE", u32 0, u64 sequence (1, 2, …), u64 records length,
//!         u64 body length, u64 checksum of the body; then the body:
//!         records in cookie order, then the head (the base's head
//!         format, names added since the last entry only)
//! record  u8 kind, then: 0 gone: cookie | 1 full: a base connection
//!         record | 2 change: cookie, seq, recorded_ns, state, flags,
//!         srtt_us, min_rtt_us, last, reported | 3: the same without
//!         reported (= last)
//! ```
//!
//! An entry is written after the last one (its header zeroed), then its
//! header, then the file is fdatasynced: the header write is a cycle's
//! commit point. Loading replays the entries in order onto the base; an
//! incomplete last entry (killed or cut before its header, or torn by a
//! crash before the sync) is ignored and cut at the next append: the
//! previous commit holds. A bad entry with more after it is corruption,
//! never silently skipped: the state is set aside. A journal of another
//! generation (left by a run stopped between writing a new base and
//! removing the old journal, or copied from elsewhere) is ignored.
//!
//! Last cycle's connections are a merge of sorted runs: the base's
//! records and each entry's, later runs winning; at most `MAX_ENTRIES`
//! runs, each read through a small buffer, so memory does not grow with
//! the live set. A new base is written (`needs_base`) once the journal
//! outgrows the base or holds `MAX_ENTRIES` entries: the state's size
//! stays bounded by the live set.

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    fs::File,
    io::{self, BufReader, Read, Seek, Write},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{
    codec::{
        self, check_conn, conn_bytes, conn_of, counters_arr, counters_of, At, Base, Dec, Enc,
        StreamHash, CONN, R,
    },
    ConnState, Counters, State, Sym,
};

pub const FILE_NAME: &str = "state.journal";
const MAGIC: &[u8; 16] = b"longconn journal";
const VERSION: u32 = 1;
const HEADER: u64 = 32;
const ENTRY_MAGIC: &[u8; 4] = b"LCJE";
const ENTRY_HEAD: u64 = 40;
/// A new base is written once the journal has this many entries (about 5
/// minutes of cycles): bounds the runs a scan merges.
pub const MAX_ENTRIES: u64 = 60;
/// A base this small is never rewritten for having shrunk.
const SHRINK_FLOOR: u64 = 1 << 10;
/// A state rewritten for having shrunk drops its unused names from this
/// many on (below `codec::COMPACT_AT`, where every load would decode the
/// connections to find them).
const SHRINK_COMPACT_AT: usize = 64;

const GONE: u8 = 0;
const FULL: u8 = 1;
const CHANGE: u8 = 2;
const CHANGE_REPORTED: u8 = 3;
/// A change record without its kind byte, cookie and `reported`.
const CHANGE_LEN: usize = 8 * 2 + 4 * 4 + 48;

/// The journal beside the base at `base`.
pub fn path_for(base: &Path) -> PathBuf {
    base.with_file_name(FILE_NAME)
}

/// A new, random generation (never 0, which means "no journal").
pub fn new_generation() -> u64 {
    let mut b = [0u8; 8];
    let n = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
    let mut g = u64::from_le_bytes(b);
    if n.ok() != Some(b.len()) {
        // No entropy source: time and pid are unique enough for one host.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        g = t ^ (u64::from(std::process::id()) << 48);
    }
    g.max(1)
}

/// One connection's record in an entry.
#[derive(Clone, Copy, Debug)]
enum Op {
    Gone,
    Full(ConnState),
    Change(Change),
}

/// The fields of a connection that move while it lives.
#[derive(Clone, Copy, Debug)]
struct Change {
    seq: u64,
    recorded_ns: u64,
    small: [u32; 4],
    last: Counters,
    reported: Counters,
}

impl Change {
    fn of(c: &ConnState) -> Self {
        Self {
            seq: c.seq,
            recorded_ns: c.recorded_ns,
            small: [c.state, c.flags, c.srtt_us, c.min_rtt_us],
            last: c.last,
            reported: c.reported,
        }
    }
    fn apply(&self, c: &mut ConnState) {
        c.seq = self.seq;
        c.recorded_ns = self.recorded_ns;
        [c.state, c.flags, c.srtt_us, c.min_rtt_us] = self.small;
        c.last = self.last;
        c.reported = self.reported;
    }
}

/// The record for `c` given its previous state `p`: none when nothing
/// stored changed (`update_ns` is not stored).
fn op_for(p: Option<&ConnState>, c: &ConnState) -> Option<Op> {
    let Some(p) = p else {
        return Some(Op::Full(*c));
    };
    let mut same = *c;
    same.update_ns = p.update_ns;
    if same == *p {
        return None;
    }
    Change::of(p).apply(&mut same);
    Some(if same == *p {
        Op::Change(Change::of(c))
    } else {
        Op::Full(*c)
    })
}

fn put_op<W: Write>(e: &mut Enc<W>, cookie: u64, op: &Op) -> io::Result<()> {
    match op {
        Op::Gone => {
            e.put(&[GONE])?;
            e.u64(cookie)
        }
        Op::Full(c) => {
            e.put(&[FULL])?;
            e.put(&conn_bytes(cookie, c))
        }
        Op::Change(ch) => {
            let with_reported = ch.reported != ch.last;
            e.put(&[if with_reported {
                CHANGE
            } else {
                CHANGE_REPORTED
            }])?;
            e.u64(cookie)?;
            e.u64(ch.seq)?;
            e.u64(ch.recorded_ns)?;
            for v in ch.small {
                e.u32(v)?;
            }
            for v in counters_arr(ch.last) {
                e.u64(v)?;
            }
            if with_reported {
                for v in counters_arr(ch.reported) {
                    e.u64(v)?;
                }
            }
            Ok(())
        }
    }
}

/// Reads one record; `names` bounds the names a full record may use.
fn get_op(d: &mut Dec<'_>, names: usize) -> R<(u64, Op)> {
    let [kind] = d.bytes::<1>()?;
    match kind {
        GONE => Ok((d.u64()?, Op::Gone)),
        FULL => {
            let b = d.bytes::<CONN>()?;
            let (cookie, c) = conn_of(&b, names)?;
            Ok((cookie, Op::Full(c)))
        }
        CHANGE | CHANGE_REPORTED => {
            let cookie = d.u64()?;
            let b = d.bytes::<CHANGE_LEN>()?;
            let word = |i: usize| {
                let mut a = [0u8; 8];
                a.copy_from_slice(&b[i..i + 8]);
                u64::from_le_bytes(a)
            };
            let half = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
            let counters = |at: usize| {
                let mut a = [0u64; 6];
                for (k, v) in a.iter_mut().enumerate() {
                    *v = word(at + 8 * k);
                }
                counters_of(a)
            };
            let last = counters(32);
            let reported = if kind == CHANGE {
                let mut a = [0u64; 6];
                for v in &mut a {
                    *v = d.u64()?;
                }
                counters_of(a)
            } else {
                last
            };
            Ok((
                cookie,
                Op::Change(Change {
                    seq: word(0),
                    recorded_ns: word(8),
                    small: [half(16), half(20), half(24), half(28)],
                    last,
                    reported,
                }),
            ))
        }
        k => Err(format!("unknown record kind {k}")),
    }
}

/// Where one entry's records are, and the names they may use.
#[derive(Clone, Copy, Debug)]
struct Run {
    at: u64,
    len: u64,
    names: usize,
}

/// The journal as loaded: its runs and where the next entry goes.
pub struct Loaded {
    file: Arc<File>,
    runs: Vec<Run>,
    /// End of the last complete entry.
    valid_len: u64,
}

/// Reads the journal `file` of the base `base`, replaying each entry's
/// head onto `s`. Ok(None): not this base's journal (ignored).
/// Ok(Err(problem)): a bad entry that is not the last (corruption).
pub fn open(file: File, base: &Base, s: &mut State) -> io::Result<Result<Option<Loaded>, String>> {
    let len = file.metadata()?.len();
    let mut h = [0u8; HEADER as usize];
    if codec::read_at_most(&file, 0, &mut h)? < h.len()
        || &h[..16] != MAGIC
        || h[16..20] != VERSION.to_le_bytes()
        || h[24..32] != base.generation.to_le_bytes()
    {
        return Ok(Ok(None));
    }
    let file = Arc::new(file);
    let mut runs = Vec::new();
    let mut at = HEADER;
    while at < len {
        let mut eh = [0u8; ENTRY_HEAD as usize];
        let got = codec::read_at_most(&file, at, &mut eh)?;
        if got < eh.len() || eh == [0u8; ENTRY_HEAD as usize] {
            break; // killed before its header: not committed
        }
        let word = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&eh[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let (seq, rec_len, body_len, sum) = (word(8), word(16), word(24), word(32));
        let bad = |why: &str| Ok(Err(format!("{FILE_NAME}: entry at byte {at} {why}")));
        if &eh[..4] != ENTRY_MAGIC || eh[4..8] != [0; 4] {
            return bad("has no entry header");
        }
        if seq != runs.len() as u64 + 1 {
            return bad(&format!("is number {seq}, expected {}", runs.len() + 1));
        }
        let end = (at + ENTRY_HEAD).checked_add(body_len);
        let Some(end) = end.filter(|e| *e <= len) else {
            break; // cut short (a crash before the sync): not committed
        };
        if rec_len > body_len {
            return bad("has records longer than its body");
        }
        let mut hs = StreamHash::new();
        codec::hash_range(&file, at + ENTRY_HEAD, body_len, &mut hs)?;
        if hs.finish() != sum {
            if end == len {
                break; // torn last entry (a crash before the sync)
            }
            return bad("is corrupt (checksum mismatch)");
        }
        let mut r = BufReader::with_capacity(
            1 << 14,
            At {
                file: file.clone(),
                at: at + ENTRY_HEAD + rec_len,
            }
            .take(body_len - rec_len),
        );
        let prior = std::mem::take(&mut s.strings);
        let (head, generation) = match codec::decode_head(
            &mut r,
            body_len - rec_len,
            codec::FORMAT_VERSION,
            Some(prior),
        ) {
            Ok(v) => v,
            Err(p) => return bad(&p),
        };
        if generation != base.generation {
            return bad("belongs to another base");
        }
        *s = head;
        runs.push(Run {
            at: at + ENTRY_HEAD,
            len: rec_len,
            names: s.strings.len(),
        });
        at = end;
    }
    Ok(Ok(Some(Loaded {
        file,
        runs,
        valid_len: at,
    })))
}

/// Last cycle's connections: the base merged with the journal's entries.
pub struct PrevFile {
    base: Arc<File>,
    base_n: u64,
    base_names: usize,
    /// The base's size in bytes.
    base_len: u64,
    journal: Option<Loaded>,
    /// Old name number -> new, when the name table was compacted at load.
    remap: Option<Arc<Vec<Sym>>>,
    /// Where the next cycle's state goes (see `Saver`).
    pub(super) plan: Plan,
}

/// What the next save may do.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub generation: u64,
    /// None: write a new base.
    pub append: Option<Append>,
}

#[derive(Clone, Copy, Debug)]
pub struct Append {
    /// The journal's valid length (None: start a journal).
    pub at: Option<u64>,
    /// Entries in it.
    pub entries: u64,
    /// Names already stored (base and entries).
    pub names: usize,
}

impl PrevFile {
    pub fn new(base: Base, journal: Option<Loaded>, names: usize) -> Self {
        let (len, entries) = journal
            .as_ref()
            .map_or((0, 0), |j| (j.valid_len, j.runs.len() as u64));
        // A new base once the journal outgrows it (or a v5 base: none).
        let append =
            (base.generation != 0 && len < base.len && entries < MAX_ENTRIES).then_some(Append {
                at: journal.as_ref().map(|j| j.valid_len),
                entries,
                names,
            });
        Self {
            base: base.file,
            base_n: base.n,
            base_names: base.names,
            base_len: base.len,
            journal,
            remap: None,
            plan: Plan {
                generation: base.generation,
                append,
            },
        }
    }

    /// The connections in cookie order.
    pub fn scan(&self) -> Scan {
        let mut runs = vec![RunReader {
            r: BufReader::with_capacity(
                1 << 16,
                At {
                    file: self.base.clone(),
                    at: codec::HEADER as u64,
                }
                .take(self.base_n * CONN as u64),
            ),
            left: self.base_n * CONN as u64,
            names: self.base_names,
            last: None,
        }];
        if let Some(j) = &self.journal {
            for run in &j.runs {
                runs.push(RunReader {
                    r: BufReader::with_capacity(
                        1 << 13,
                        At {
                            file: j.file.clone(),
                            at: run.at,
                        }
                        .take(run.len),
                    ),
                    left: run.len,
                    names: run.names,
                    last: None,
                });
            }
        }
        let mut scan = Scan {
            pending: vec![None; runs.len()],
            runs,
            base_next: None,
            base_buf: Box::new([0u8; CONN]),
            heap: BinaryHeap::new(),
            remap: self.remap.clone(),
            failed: false,
            first_error: None,
            cur: ConnState::default(),
            decode: true,
        };
        for i in 0..scan.runs.len() {
            if let Err(e) = scan.refill(i) {
                scan.failed = true;
                scan.pending.clear();
                scan.heap.clear();
                scan.runs.clear();
                scan.first_error = Some(e);
                break;
            }
        }
        scan
    }

    /// Reads every connection once at load: any inconsistency is a problem;
    /// with `compact`, marks the names they use and compacts a mostly
    /// unused table.
    pub fn check(&mut self, s: &mut State, compact: bool) -> io::Result<Result<(), String>> {
        let names = s.strings.len();
        let mut used = vec![
            false;
            if compact && names >= codec::COMPACT_AT {
                names
            } else {
                0
            }
        ];
        let live = match self.mark_used(&mut used)? {
            Ok(n) => n,
            Err(p) => return Ok(Err(p)),
        };
        let mut compacted = false;
        if !used.is_empty() {
            self.remap = s.compact_strings(used).map(Arc::new);
            compacted = true;
        }
        // The state shrank to under half its base (connections closed,
        // series retired, issue 18): a new base, so the files follow the
        // state down as they follow it up, with the names it still uses.
        if compact && self.plan.append.is_some() && self.remap.is_none() {
            // Names not counted: most may be unused (retired), and the
            // new base drops those.
            let names_len: u64 = s.strings.iter().map(|t| 4 + t.len() as u64).sum();
            let now = live
                .saturating_mul(CONN as u64)
                .saturating_add(codec::head_len(s).saturating_sub(names_len));
            if now.saturating_mul(2) < self.base_len && self.base_len > SHRINK_FLOOR {
                self.plan.append = None;
                if !compacted && names >= SHRINK_COMPACT_AT {
                    let mut used = vec![false; names];
                    if let Err(p) = self.mark_used(&mut used)? {
                        return Ok(Err(p));
                    }
                    self.remap = s.compact_strings(used).map(Arc::new);
                }
            }
        }
        if self.remap.is_some() {
            // The stored numbering no longer holds: a new base.
            self.plan.append = None;
        }
        Ok(Ok(()))
    }

    /// One pass over the connections: each checked, and the names they
    /// use marked in `used` (decoded only if it is not empty); how many.
    fn mark_used(&self, used: &mut [bool]) -> io::Result<Result<u64, String>> {
        let mut live = 0u64;
        let mut scan = self.scan();
        // Without compaction nothing here needs the connections, only
        // their consistency: the base's records are checked in place.
        scan.decode = !used.is_empty();
        loop {
            match scan.advance() {
                Ok(Some(_)) => live += 1,
                Ok(None) => break,
                Err(e) if e.kind() == io::ErrorKind::InvalidData => return Ok(Err(e.to_string())),
                Err(e) => return Err(e),
            }
            if scan.decode {
                for sym in scan.cur.syms_mut() {
                    if let Some(u) = used.get_mut(*sym as usize) {
                        *u = true;
                    }
                }
            }
        }
        Ok(Ok(live))
    }
}

struct RunReader {
    r: BufReader<io::Take<At>>,
    left: u64,
    names: usize,
    last: Option<u64>,
}

/// One run's records in order: the base's read raw (`next_raw`), an
/// entry's decoded (`next`).
impl RunReader {
    fn next(&mut self) -> io::Result<Option<(u64, Op)>> {
        if self.left == 0 {
            return Ok(None);
        }
        let before = self.left;
        let mut d = Dec {
            r: &mut self.r,
            left: before,
        };
        let got = get_op(&mut d, self.names);
        let left = d.left;
        let (cookie, op) = got.map_err(invalid)?;
        self.left = left;
        self.ordered(cookie)?;
        Ok(Some((cookie, op)))
    }

    /// The base's next record, as stored, into `buf` (decoded only when
    /// taken, in place: see `Scan::take_base`); its cookie.
    fn next_raw(&mut self, buf: &mut [u8; CONN]) -> io::Result<Option<u64>> {
        if self.left == 0 {
            return Ok(None);
        }
        if (CONN as u64) > self.left {
            return Err(invalid("truncated body".to_owned()));
        }
        self.r
            .read_exact(buf)
            .map_err(|e| invalid(format!("unreadable body ({e})")))?;
        self.left -= CONN as u64;
        let mut k = [0u8; 8];
        k.copy_from_slice(&buf[..8]);
        let cookie = u64::from_le_bytes(k);
        self.ordered(cookie)?;
        Ok(Some(cookie))
    }

    fn ordered(&mut self, cookie: u64) -> io::Result<()> {
        if self.last.is_some_and(|l| l >= cookie) {
            return Err(invalid("connections out of order".to_owned()));
        }
        self.last = Some(cookie);
        Ok(())
    }
}

fn invalid(p: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, p)
}

/// A merge of the base and the entries, by cookie; for one cookie the
/// later run wins. The connection found is read in place (`advance`, then
/// `current`): at 100k connections, moving each 300-byte state out through
/// a few `Option`s was a tenth of a cycle's CPU (memmove, `perf probe`).
pub struct Scan {
    runs: Vec<RunReader>,
    /// The base's next record as stored, and its cookie.
    base_next: Option<u64>,
    base_buf: Box<[u8; CONN]>,
    /// Each entry run's next record (index 0, the base, unused).
    pending: Vec<Option<(u64, Op)>>,
    heap: BinaryHeap<Reverse<(u64, usize)>>,
    remap: Option<Arc<Vec<Sym>>>,
    failed: bool,
    first_error: Option<io::Error>,
    cur: ConnState,
    /// False: the base's records are checked, not decoded (`check`), and
    /// `cur` does not hold them.
    decode: bool,
}

impl Scan {
    /// The next record of run `i`, pending; the base (run 0) stays out of
    /// the heap: most cookies are in the base only, and take no heap step.
    fn refill(&mut self, i: usize) -> io::Result<()> {
        if i == 0 {
            self.base_next = match self.runs.first_mut() {
                Some(r) => r.next_raw(&mut self.base_buf)?,
                None => None,
            };
            return Ok(());
        }
        if let Some((cookie, op)) = self.runs[i].next()? {
            self.pending[i] = Some((cookie, op));
            self.heap.push(Reverse((cookie, i)));
        }
        Ok(())
    }

    /// The base's pending record, decoded into `cur`.
    fn take_base(&mut self) -> io::Result<()> {
        let names = self.runs.first().map_or(0, |r| r.names);
        if self.decode {
            let (_, c) = conn_of(&self.base_buf, names).map_err(invalid)?;
            self.cur = c;
        } else {
            check_conn(&self.base_buf, names).map_err(invalid)?;
        }
        self.refill(0)
    }

    /// Applies run `i`'s pending record for `cookie` to `cur` (`have`:
    /// whether `cur` holds the connection).
    fn take(&mut self, i: usize, cookie: u64, have: &mut bool) -> io::Result<()> {
        match self.pending[i].take().map(|(_, op)| op) {
            Some(Op::Full(c)) => {
                self.cur = c;
                *have = true;
            }
            Some(Op::Change(ch)) if *have => ch.apply(&mut self.cur),
            Some(Op::Change(_)) => {
                return Err(invalid(format!(
                    "{FILE_NAME}: a change to connection {cookie}, not there"
                )))
            }
            Some(Op::Gone) if *have => *have = false,
            Some(Op::Gone) | None => {
                return Err(invalid(format!(
                    "{FILE_NAME}: connection {cookie} left twice"
                )))
            }
        }
        self.refill(i)
    }

    fn step(&mut self) -> io::Result<Option<u64>> {
        loop {
            let base = self.base_next;
            let entry = self.heap.peek().map(|Reverse((k, _))| *k);
            let cookie = match (base, entry) {
                (None, None) => return Ok(None),
                (Some(b), Some(e)) => b.min(e),
                (Some(k), None) | (None, Some(k)) => k,
            };
            let mut have = false;
            // The base first, then the entries in order: later runs win.
            if base == Some(cookie) {
                self.take_base()?;
                have = true;
            }
            while let Some(&Reverse((k, i))) = self.heap.peek() {
                if k != cookie {
                    break;
                }
                self.heap.pop();
                self.take(i, cookie, &mut have)?;
            }
            if have {
                if let Some(remap) = &self.remap {
                    for s in self.cur.syms_mut() {
                        *s = remap.get(*s as usize).copied().unwrap_or(0);
                    }
                }
                return Ok(Some(cookie));
            }
        }
    }

    /// Moves to the next connection: its cookie (the connection is
    /// `current`), or None past the last one.
    pub fn advance(&mut self) -> io::Result<Option<u64>> {
        if let Some(e) = self.first_error.take() {
            return Err(e);
        }
        if self.failed {
            return Ok(None);
        }
        self.step().inspect_err(|_| self.failed = true)
    }

    /// The connection `advance` last moved to.
    pub fn current(&self) -> &ConnState {
        &self.cur
    }
}

impl Iterator for Scan {
    type Item = io::Result<(u64, ConnState)>;
    fn next(&mut self) -> Option<Self::Item> {
        match self.advance() {
            Ok(Some(k)) => Some(Ok((k, self.cur))),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

/// One cycle's entry being appended. Each connection is compared with its
/// previous state, which either the caller gives (`put`, `gone`: the
/// cycle's own merge with last cycle's connections, so they are read once)
/// or this appender finds itself (`push`: a scan of them, in step). One
/// entry is made one way or the other, never both.
pub struct Appender {
    e: Enc<File>,
    /// Where this entry starts (the journal's valid length).
    start: u64,
    seq: u64,
    names: usize,
    generation: u64,
    prev: std::iter::Peekable<Scan>,
    feed: Feed,
    last: Option<u64>,
    committed: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Feed {
    Unset,
    Scanned,
    Given,
}

impl Appender {
    /// Opens (or starts, `append.at` None) the journal at `path` and
    /// places a zeroed entry header after its last complete entry.
    pub fn begin(
        path: &Path,
        mode: u32,
        generation: u64,
        append: Append,
        prev: Scan,
    ) -> io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let ctx = |e: io::Error| crate::output::atomic::with_path(path)(e);
        let (mut file, start) = match append.at {
            Some(at) => {
                let f = File::options()
                    .write(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
                    .open(path)
                    .map_err(&ctx)?;
                // Whatever a killed run left after the last commit goes.
                f.set_len(at).map_err(&ctx)?;
                (f, at)
            }
            None => {
                let (tmp, mut f) = crate::output::atomic::create_temp_for(path, mode)?;
                let mut h = [0u8; HEADER as usize];
                h[..16].copy_from_slice(MAGIC);
                h[16..20].copy_from_slice(&VERSION.to_le_bytes());
                h[24..32].copy_from_slice(&generation.to_le_bytes());
                let made = f
                    .write_all(&h)
                    .and_then(|()| f.sync_data())
                    .map_err(crate::output::atomic::with_path(&tmp))
                    .and_then(|()| std::fs::rename(&tmp, path).map_err(&ctx));
                if let Err(e) = made {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
                crate::output::atomic::fsync_dir(crate::output::atomic::parent_dir(path))?;
                (f, HEADER)
            }
        };
        file.write_all_at(&[0u8; ENTRY_HEAD as usize], start)
            .map_err(&ctx)?;
        file.seek(io::SeekFrom::Start(start + ENTRY_HEAD))
            .map_err(&ctx)?;
        Ok(Self {
            e: Enc::new(file),
            start,
            seq: append.entries + 1,
            names: append.names,
            generation,
            prev: prev.peekable(),
            feed: Feed::Unset,
            last: None,
            committed: false,
        })
    }

    /// Records the connections of last cycle before `cookie` as gone.
    fn gone_before(&mut self, cookie: Option<u64>) -> io::Result<()> {
        while let Some(item) = self.prev.next_if(|i| {
            i.as_ref()
                .map_or(true, |(k, _)| cookie.is_none_or(|c| *k < c))
        }) {
            let (k, _) = item?;
            put_op(&mut self.e, k, &Op::Gone)?;
        }
        Ok(())
    }

    /// Checks that cookies increase and that one entry is fed one way.
    fn next_cookie(&mut self, cookie: u64, feed: Feed) -> io::Result<()> {
        if self.last.is_some_and(|l| l >= cookie) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "state connections out of cookie order",
            ));
        }
        if self.feed != feed && self.feed != Feed::Unset {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a state journal entry fed both by scan and by the caller",
            ));
        }
        self.feed = feed;
        self.last = Some(cookie);
        Ok(())
    }

    /// One live connection (cookies increasing), compared with its previous
    /// state as this appender's own scan finds it.
    pub fn push(&mut self, cookie: u64, c: &ConnState) -> io::Result<()> {
        self.next_cookie(cookie, Feed::Scanned)?;
        self.gone_before(Some(cookie))?;
        let p = match self
            .prev
            .next_if(|i| matches!(i, Ok((k, _)) if *k == cookie))
        {
            Some(item) => Some(item?.1),
            None => None,
        };
        match op_for(p.as_ref(), c) {
            Some(op) => put_op(&mut self.e, cookie, &op),
            None => Ok(()),
        }
    }

    /// One live connection and its state last cycle as stored (None: new),
    /// cookies increasing together with `gone`.
    pub fn put(&mut self, cookie: u64, prev: Option<&ConnState>, c: &ConnState) -> io::Result<()> {
        self.next_cookie(cookie, Feed::Given)?;
        match op_for(prev, c) {
            Some(op) => put_op(&mut self.e, cookie, &op),
            None => Ok(()),
        }
    }

    /// One of last cycle's connections that is no longer live.
    pub fn gone(&mut self, cookie: u64) -> io::Result<()> {
        self.next_cookie(cookie, Feed::Given)?;
        put_op(&mut self.e, cookie, &Op::Gone)
    }

    /// The rest of the entry and its header, then fdatasync: committed.
    pub fn commit(mut self, s: &State) -> io::Result<()> {
        if self.feed != Feed::Given {
            self.gone_before(None)?;
        }
        let records = self.e.written();
        codec::write_head(&mut self.e, s, self.generation, self.names)?;
        let (body, sum) = self.e.finish_body()?;
        let mut h = [0u8; ENTRY_HEAD as usize];
        h[..4].copy_from_slice(ENTRY_MAGIC);
        for (i, v) in [self.seq, records, body, sum].into_iter().enumerate() {
            h[8 + 8 * i..16 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        self.e.w.write_all_at(&h, self.start)?;
        self.committed = true;
        self.e.w.sync_data()
    }
}

impl Drop for Appender {
    fn drop(&mut self) {
        if !self.committed {
            // Not committed: leave the journal as it was.
            let _ = self.e.w.set_len(self.start);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_only_where_needed() {
        let p = ConnState {
            seq: 1,
            srtt_us: 5,
            update_ns: 9,
            ..Default::default()
        };
        let mut c = p;
        c.update_ns = 10;
        assert!(op_for(Some(&p), &c).is_none(), "update_ns is not stored");
        c.seq = 2;
        c.last.bytes_sent = 7;
        assert!(matches!(op_for(Some(&p), &c), Some(Op::Change(_))));
        c.wkey = 3;
        assert!(matches!(op_for(Some(&p), &c), Some(Op::Full(_))));
        assert!(matches!(op_for(None, &c), Some(Op::Full(_))));
    }
}
