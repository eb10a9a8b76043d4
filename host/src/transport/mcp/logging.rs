//! MCP logging: op log lines forwarded to the client as `notifications/message`, and the
//! severity ranks that `logging/setLevel` (or a 2026-07-28 request's `_meta`) filters them by.
//!
//! MCP logging is deprecated by the 2026-07-28 revision (SEP-2577) but part of 2025-11-25,
//! which flowhost serves too.

#![allow(deprecated)]

use rmcp::model::{LoggingLevel, LoggingMessageNotificationParam};
use rmcp::service::Peer;
use rmcp::RoleServer;

use crate::exec::{Level, LogLine};

/// Severity ranks shared by op levels and MCP levels (higher is more severe).
pub(crate) fn mcp_level_rank(level: LoggingLevel) -> u8 {
    match level {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}

pub(crate) fn op_level_rank(level: Level) -> u8 {
    match level {
        Level::Debug => 0,
        Level::Info => 1,
        Level::Warn => 3,
        Level::Error => 4,
    }
}

pub(crate) async fn forward_log(peer: &Peer<RoleServer>, line: LogLine) {
    let level = match line.level {
        Level::Debug => LoggingLevel::Debug,
        Level::Info => LoggingLevel::Info,
        Level::Warn => LoggingLevel::Warning,
        Level::Error => LoggingLevel::Error,
    };
    let param =
        LoggingMessageNotificationParam::new(level, line.message.into()).with_logger(line.op);
    let _ = peer.notify_logging_message(param).await;
}

pub(crate) fn set_level(request: &rmcp::model::SetLevelRequestParams) -> u8 {
    mcp_level_rank(request.level)
}
