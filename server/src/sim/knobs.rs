//! Everything a seed decides up front: the server's configuration (as environment variables,
//! parsed by the real `Config`) and the fault rates.

use super::rng::Rng;

/// Everything a seed decides up front: the server's configuration and the fault rates
/// (per mille).
#[derive(Clone, Debug)]
pub(super) struct Knobs {
    pub(super) workers: usize,
    pub(super) publish_listener: bool,
    /// Each worker also listens for RESP, and some peers speak it.
    pub(super) resp_listener: bool,
    pub(super) max_frame: usize,
    pub(super) queue_max: usize,
    pub(super) close_timeout_ms: u64,
    pub(super) shutdown_timeout_ms: u64,
    pub(super) read_budget: usize,
    pub(super) recv_buffers: u16,
    pub(super) recv_buffer_bytes: usize,
    pub(super) drop_policy: bool,
    pub(super) slow_timeout_ms: u64,
    pub(super) max_connections: usize,
    pub(super) echo: bool,
    pub(super) run_steps: u32,
    pub(super) max_peers: usize,
    pub(super) arrive_pm: u32,
    pub(super) short_pm: u32,
    pub(super) hold_pm: u32,
    pub(super) late_pm: u32,
    pub(super) overflow_pm: u32,
    pub(super) emfile_pm: u32,
    pub(super) send_enobufs_pm: u32,
    pub(super) survive_pm: u32,
    pub(super) reset_after_shut_pm: u32,
    pub(super) reset_on_block_pm: u32,
    /// Broken-driver mode: cancelled operations never post their final completion.
    pub(super) lose_cancel_finals: bool,
}

impl Knobs {
    pub(super) fn random(rng: &mut Rng) -> Self {
        Knobs {
            workers: if rng.chance(300) { 2 } else { 1 },
            publish_listener: rng.chance(150),
            resp_listener: rng.chance(300),
            max_frame: rng.range(64, 160) as usize,
            queue_max: rng.pick(&[200, 600, 1500, 4000, 20_000]),
            close_timeout_ms: rng.range(20, 600),
            shutdown_timeout_ms: rng.range(100, 3000),
            read_budget: rng.range(16, 1024) as usize,
            recv_buffers: rng.pick(&[2, 4, 8, 16, 64]),
            recv_buffer_bytes: rng.range(64, 300) as usize,
            drop_policy: rng.chance(250),
            slow_timeout_ms: if rng.chance(500) {
                0
            } else {
                rng.range(30, 2000)
            },
            max_connections: rng.range(2, 16) as usize,
            echo: rng.chance(800),
            run_steps: rng.range(30, 500) as u32,
            max_peers: rng.range(2, 24) as usize,
            arrive_pm: rng.range(20, 300) as u32,
            short_pm: rng.pick(&[0, 100, 400, 800]),
            hold_pm: rng.pick(&[0, 50, 200, 400]),
            late_pm: rng.pick(&[0, 300, 700, 1000]),
            overflow_pm: rng.pick(&[0, 0, 20, 100]),
            emfile_pm: rng.pick(&[0, 0, 0, 30]),
            send_enobufs_pm: rng.pick(&[0, 0, 20]),
            survive_pm: rng.pick(&[0, 100, 400]),
            reset_after_shut_pm: rng.pick(&[0, 100, 300]),
            reset_on_block_pm: rng.pick(&[0, 30, 100]),
            lose_cancel_finals: false,
        }
    }

    pub(super) fn env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("RINGFAN_MAX_FRAME_BYTES", self.max_frame.to_string()),
            ("RINGFAN_SEND_QUEUE_BYTES_MAX", self.queue_max.to_string()),
            (
                "RINGFAN_CLOSE_TIMEOUT_MS",
                self.close_timeout_ms.to_string(),
            ),
            (
                "RINGFAN_SHUTDOWN_TIMEOUT_MS",
                self.shutdown_timeout_ms.to_string(),
            ),
            ("RINGFAN_READ_BUDGET_BYTES", self.read_budget.to_string()),
            ("RINGFAN_RECV_BUFFERS", self.recv_buffers.to_string()),
            (
                "RINGFAN_RECV_BUFFER_BYTES",
                self.recv_buffer_bytes.to_string(),
            ),
            (
                "RINGFAN_SLOW_CONSUMER",
                if self.drop_policy {
                    "drop"
                } else {
                    "disconnect"
                }
                .to_string(),
            ),
            (
                "RINGFAN_SLOW_CONSUMER_TIMEOUT_MS",
                self.slow_timeout_ms.to_string(),
            ),
            ("RINGFAN_MAX_CONNECTIONS", self.max_connections.to_string()),
            (
                "RINGFAN_ECHO",
                if self.echo { "1" } else { "0" }.to_string(),
            ),
            ("RINGFAN_KEEPALIVE_SECS", "0".to_string()),
            ("RINGFAN_USER_TIMEOUT_MS", "0".to_string()),
            ("RINGFAN_THREADS", self.workers.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if self.publish_listener {
            env.push((
                "RINGFAN_PUBLISH_LISTEN".to_string(),
                "127.0.0.1:0".to_string(),
            ));
        }
        if self.resp_listener {
            env.push(("RINGFAN_RESP_LISTEN".to_string(), "127.0.0.1:0".to_string()));
        }
        env
    }
}
