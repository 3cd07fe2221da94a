//! Writing outputs so that a reader killed at any instant never leaves a
//! partial file, a lost record or a duplicated one.

pub mod access;
pub mod applog;
pub mod atomic;
pub mod event;
#[cfg(test)]
pub mod golden;
pub mod jsonw;
pub mod logowner;
pub mod otlp;
pub mod owner;
pub mod promtext;
pub mod text;

/// The append-only files a cycle may write, each with its one name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AppendFile {
    AccessCsv,
    AccessJsonl,
    OtlpMetrics,
    OtlpLogs,
}

impl AppendFile {
    pub fn name(self) -> &'static str {
        match self {
            Self::AccessCsv => "access.csv",
            Self::AccessJsonl => "access.jsonl",
            Self::OtlpMetrics => "otlp-metrics.jsonl",
            Self::OtlpLogs => "otlp-logs.jsonl",
        }
    }

    /// What a new file starts with.
    pub fn header(self) -> Vec<u8> {
        match self {
            Self::AccessCsv => access::csv_header(),
            _ => Vec::new(),
        }
    }

    /// Whether the access events of a cycle go into it (else one line of
    /// metrics per cycle).
    pub fn takes_events(self) -> bool {
        self != Self::OtlpMetrics
    }
}
pub mod snapshot;

pub(crate) use owner::apply_group;
