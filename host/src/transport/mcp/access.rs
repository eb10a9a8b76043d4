//! Who calls over MCP, and what is recorded of their calls: over Streamable HTTP the caller
//! the HTTP guard found (it travels in the request's `http::request::Parts`, which rmcp hands
//! to every request's context); over stdio `local`. And which subject made each task.

use std::sync::Arc;

use rmcp::service::RequestContext;

use crate::auth::{Auth, Caller, Grant};

/// Who calls, and what is recorded of their calls: the caller of an HTTP request is the one the
/// HTTP guard found (in the request's parts); over stdio it is `local`, the agent tool that
/// started the host.
#[derive(Clone)]
pub(crate) struct Access {
    pub(crate) auth: Arc<Auth>,
    /// Whoever a request without HTTP parts speaks for (stdio: `local`).
    default: Arc<Caller>,
    /// Which subject made each task (shared by every session, as the tasks are).
    pub(super) owners: Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<str>>>>,
}

impl Access {
    /// Stdio: the one client that started the host may call every flow.
    pub(crate) fn local(auth: Arc<Auth>) -> Access {
        Access {
            auth,
            default: Caller::local(),
            owners: Arc::default(),
        }
    }

    /// Streamable HTTP: a request the guard let through carries its caller; anything else
    /// (which the guard never lets through) may see nothing.
    pub(crate) fn http(auth: Arc<Auth>) -> Access {
        Access {
            auth,
            default: Arc::new(Caller {
                subject: "nobody".into(),
                label: "nobody".into(),
                owner: "nobody".into(),
                grant: Arc::new(Grant::none()),
                rate: None,
                via: "none",
                calls: Default::default(),
            }),
            owners: Arc::default(),
        }
    }

    pub(crate) fn caller<T>(&self, context: &RequestContext<T>) -> Arc<Caller>
    where
        T: rmcp::service::ServiceRole,
    {
        self.caller_in(&context.extensions)
    }

    /// The caller of a request or notification with these extensions.
    pub(crate) fn caller_in(&self, extensions: &rmcp::model::Extensions) -> Arc<Caller> {
        match extensions.get::<axum::http::request::Parts>() {
            Some(parts) => parts
                .extensions
                .get::<Arc<Caller>>()
                .cloned()
                .unwrap_or_else(|| Access::http(self.auth.clone()).default),
            None => self.default.clone(),
        }
    }

    /// Records that `caller` made task `id` (forgetting tasks rmcp no longer keeps, now and
    /// then).
    pub(crate) fn own(&self, id: &str, caller: &Caller, tasks: &rmcp::task_manager::TaskManager) {
        let mut owners = self.owners.lock().unwrap_or_else(|p| p.into_inner());
        if owners.len() >= 10_000 {
            owners.retain(|id, _| tasks.get_task(id).is_ok());
        }
        owners.insert(id.to_string(), caller.owner.clone());
    }
}
