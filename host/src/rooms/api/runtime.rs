use super::{RoomState, host};
use crate::sandbox::LogLevel;

impl host::Runtime for RoomState {
    fn log(&mut self, level: LogLevel, message: String) {
        let level = match level {
            LogLevel::Trace => tracing::Level::TRACE,
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Error => tracing::Level::ERROR,
        };
        self.output.line(level, &message);
    }

    fn now_ms(&mut self) -> u64 {
        crate::rooms::now_ms()
    }

    fn random_bytes(&mut self, len: u32) -> Vec<u8> {
        let mut bytes = vec![0; (len as usize).min(64 << 10)];
        // The OS generator failing is not something a guest can act on;
        // zeros would be silently unsafe, so this is logged loudly.
        if let Err(e) = getrandom::fill(&mut bytes) {
            tracing::error!(cause = %e, "the OS random generator failed");
        }
        bytes
    }
}
