use super::{RoomState, host};
use crate::sandbox::LogLevel;

/// Longest log line kept from a guest; the rest is cut.
const MAX_LOG_LINE_BYTES: usize = 4096;

impl host::Runtime for RoomState {
    fn log(&mut self, level: LogLevel, message: String) {
        let mut end = message.len().min(MAX_LOG_LINE_BYTES);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let message = &message[..end];
        let room = &self.key;
        match level {
            LogLevel::Trace => tracing::trace!(target: "guest", %room, "{message}"),
            LogLevel::Debug => tracing::debug!(target: "guest", %room, "{message}"),
            LogLevel::Info => tracing::info!(target: "guest", %room, "{message}"),
            LogLevel::Warn => tracing::warn!(target: "guest", %room, "{message}"),
            LogLevel::Error => tracing::error!(target: "guest", %room, "{message}"),
        }
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
