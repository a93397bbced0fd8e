//! Counters for `GET /metrics`, in Prometheus' text exposition format. Plain atomics: the
//! engine thread and the handlers update them without locks.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds (seconds) of the engine step latency histogram's buckets.
pub const STEP_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The endpoints requests are counted by.
pub const ENDPOINTS: [&str; 5] = [
    "completions",
    "chat_completions",
    "models",
    "health",
    "other",
];

/// Status codes requests are counted by (others count as 500).
const STATUSES: [u16; 8] = [200, 400, 401, 404, 405, 413, 500, 503];

/// Everything `/metrics` reports.
#[derive(Debug)]
pub struct Metrics {
    requests: [[AtomicU64; STATUSES.len()]; ENDPOINTS.len()],
    /// Prompt tokens of requests the engine started.
    pub prompt_tokens: AtomicU64,
    /// Tokens generated and sent.
    pub completion_tokens: AtomicU64,
    /// Requests waiting for a slot.
    pub queue_depth: AtomicU64,
    /// Slots decoding or prefilling a request.
    pub active_slots: AtomicU64,
    /// Times the engine recovered from a panic by restarting.
    pub engine_restarts: AtomicU64,
    step_buckets: [AtomicU64; STEP_BUCKETS.len()],
    step_count: AtomicU64,
    step_sum_ns: AtomicU64,
    /// Rows (tokens) fed through forward passes.
    pub rows: AtomicU64,
    slots: u64,
}

impl Metrics {
    /// Zeroed counters for a server of `slots` slots.
    pub fn new(slots: usize) -> Self {
        Self {
            requests: Default::default(),
            prompt_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
            queue_depth: AtomicU64::new(0),
            active_slots: AtomicU64::new(0),
            engine_restarts: AtomicU64::new(0),
            step_buckets: Default::default(),
            step_count: AtomicU64::new(0),
            step_sum_ns: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            slots: slots as u64,
        }
    }

    /// Counts one answered request.
    pub fn request(&self, endpoint: &str, status: u16) {
        let e = ENDPOINTS
            .iter()
            .position(|&n| n == endpoint)
            .unwrap_or(ENDPOINTS.len() - 1);
        let s = STATUSES.iter().position(|&c| c == status).unwrap_or(6);
        self.requests[e][s].fetch_add(1, Relaxed);
    }

    /// Requests answered so far for `endpoint` with `status`.
    pub fn requests(&self, endpoint: &str, status: u16) -> u64 {
        match (
            ENDPOINTS.iter().position(|&n| n == endpoint),
            STATUSES.iter().position(|&c| c == status),
        ) {
            (Some(e), Some(s)) => self.requests[e][s].load(Relaxed),
            _ => 0,
        }
    }

    /// Records one engine step (a forward pass and its sampling) of `rows` rows.
    pub fn step(&self, took: Duration, rows: usize) {
        let secs = took.as_secs_f64();
        if let Some(b) = STEP_BUCKETS.iter().position(|&le| secs <= le) {
            self.step_buckets[b].fetch_add(1, Relaxed);
        }
        self.step_count.fetch_add(1, Relaxed);
        self.step_sum_ns
            .fetch_add(took.as_nanos().min(u64::MAX as u128) as u64, Relaxed);
        self.rows.fetch_add(rows as u64, Relaxed);
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(4096);
        let w = &mut o;
        let _ = writeln!(
            w,
            "# HELP baremetal_requests_total HTTP requests answered, by endpoint and status code."
        );
        let _ = writeln!(w, "# TYPE baremetal_requests_total counter");
        for (e, name) in ENDPOINTS.iter().enumerate() {
            for (s, code) in STATUSES.iter().enumerate() {
                let n = self.requests[e][s].load(Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        w,
                        "baremetal_requests_total{{endpoint=\"{name}\",code=\"{code}\"}} {n}"
                    );
                }
            }
        }
        let counters = [
            (
                "baremetal_prompt_tokens_total",
                "Prompt tokens of the requests the engine started.",
                &self.prompt_tokens,
            ),
            (
                "baremetal_completion_tokens_total",
                "Tokens generated.",
                &self.completion_tokens,
            ),
            (
                "baremetal_engine_rows_total",
                "Token rows fed through forward passes (prompt and decode).",
                &self.rows,
            ),
            (
                "baremetal_engine_restarts_total",
                "Times the engine thread recovered from a panic.",
                &self.engine_restarts,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                w,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
        let gauges = [
            (
                "baremetal_queue_depth",
                "Requests waiting for a free slot.",
                self.queue_depth.load(Relaxed),
            ),
            (
                "baremetal_active_slots",
                "Slots prefilling or decoding a request.",
                self.active_slots.load(Relaxed),
            ),
            ("baremetal_slots", "Slots (--parallel).", self.slots),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(w, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let name = "baremetal_step_seconds";
        let _ = writeln!(w, "# HELP {name} Wall time of one engine step: one batched forward pass over every active sequence, and sampling.");
        let _ = writeln!(w, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (le, b) in STEP_BUCKETS.iter().zip(&self.step_buckets) {
            cumulative += b.load(Relaxed);
            let _ = writeln!(w, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let count = self.step_count.load(Relaxed);
        let _ = writeln!(w, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            w,
            "{name}_sum {}",
            self.step_sum_ns.load(Relaxed) as f64 / 1e9
        );
        let _ = writeln!(w, "{name}_count {count}");
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_requests_are_labelled() {
        let m = Metrics::new(3);
        m.step(Duration::from_micros(300), 2);
        m.step(Duration::from_millis(3), 1);
        m.step(Duration::from_secs(20), 1);
        m.request("completions", 200);
        m.request("completions", 200);
        m.request("chat_completions", 503);
        let text = m.render();
        for line in [
            "baremetal_step_seconds_bucket{le=\"0.0005\"} 1",
            "baremetal_step_seconds_bucket{le=\"0.0025\"} 1",
            "baremetal_step_seconds_bucket{le=\"0.005\"} 2",
            "baremetal_step_seconds_bucket{le=\"10\"} 2",
            "baremetal_step_seconds_bucket{le=\"+Inf\"} 3",
            "baremetal_step_seconds_count 3",
            "baremetal_engine_rows_total 4",
            "baremetal_slots 3",
            "baremetal_requests_total{endpoint=\"completions\",code=\"200\"} 2",
            "baremetal_requests_total{endpoint=\"chat_completions\",code=\"503\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }
}
