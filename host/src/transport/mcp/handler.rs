//! The MCP server handler (rmcp's `ServerHandler`) for one connection or session: the tools
//! list (one tool per flow), resources, prompts, `logging/setLevel`, the task requests, and
//! the list-changed and resource-updated announcements after a reload (`notifications/*` for
//! initialize-era sessions, `subscriptions/listen` for 2026-07-28 clients). `tools/call` is
//! handed to `call.rs`.
//!
//! Long because rmcp's `ServerHandler` is one trait with a method per MCP request, and each
//! method here is short glue to the catalog, `call.rs` or `tasks.rs`; split across files it
//! would be one `impl` in pieces.

use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ErrorCode, ErrorData, GetPromptRequestParams,
    GetPromptResponse, GetPromptResult, Implementation, ListPromptsResult,
    ListResourceTemplatesResult, ListResourcesResult, ListToolsResult, PaginatedRequestParams,
    ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, ServerCapabilities,
    ServerConfig, SubscribeRequestParams, SubscriptionFilter, Tool, UnsubscribeRequestParams,
};
use rmcp::service::{NotificationContext, RequestContext, SubscriptionContext};
use rmcp::{RoleServer, ServerHandler};
use serde_json::{json, Map, Value};

pub(crate) use super::access::Access;
use super::ask::{speaks_2026, Exchange};
use super::logging;
use crate::auth::{Auth, Caller};
use crate::catalog::Catalog;
use crate::exec;

/// The MCP server for one connection (stdio) or one session (HTTP).
#[derive(Clone)]
pub(crate) struct FlowTools {
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) run_options: exec::Options,
    /// The lowest op log level the client asked for with `logging/setLevel` (a rank, see
    /// [`level_rank`]); none until it asks.
    pub(crate) log_level: Arc<std::sync::atomic::AtomicU8>,
    /// Resource URIs this session subscribed to (`resources/subscribe`), with the fingerprint
    /// of what they read as when last announced.
    subscriptions: Arc<std::sync::Mutex<std::collections::BTreeMap<String, Option<String>>>>,
    /// Calls that became tasks (shared by every session of this server).
    pub(crate) tasks: Arc<rmcp::task_manager::TaskManager>,
    /// The tasks of every host sharing the run store (HTTP with a durable store).
    pub(crate) shared_tasks: Option<Arc<super::tasks::SharedTasks>>,
    pub(crate) access: Access,
    /// Cancelled when the last clone of this session's handler is dropped (the session
    /// ended): what was spawned for the session ends with it.
    ended: tokio_util::sync::CancellationToken,
    _ending: Arc<tokio_util::sync::DropGuard>,
}

/// Subscriptions one session may hold, and the longest URI it may subscribe to.
pub(crate) const MAX_SUBSCRIPTIONS: usize = 100;
pub(crate) const MAX_URI_BYTES: usize = 2048;

/// No `logging/setLevel` yet: op logs stay in the host's log.
pub(crate) const LOGS_OFF: u8 = u8::MAX;

impl FlowTools {
    /// The error for a `flow://` URI this request's caller may not read (the same as for one
    /// that does not exist), if it may not.
    fn refused_resource(
        &self,
        context: &RequestContext<RoleServer>,
        uri: &str,
    ) -> Option<ErrorData> {
        let flow = crate::catalog::content::flow_of_uri(uri)?;
        let caller = self.access.caller(context);
        caller
            .refused(flow, self.catalog.snapshot().get(flow).is_some())
            .then(|| {
                ErrorData::new(
                    ErrorCode::RESOURCE_NOT_FOUND,
                    format!("no resource `{uri}` this caller may read"),
                    Some(json!({"uri": uri})),
                )
            })
    }

    /// Whether `caller` may see task `id`: a task this host keeps only by whoever made it; one
    /// it does not keep is the shared store's to check (or unknown).
    fn may_touch(&self, id: &str, caller: &Caller) -> bool {
        if self.tasks.get_task(id).is_err() {
            return true;
        }
        self.access
            .owners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .is_some_and(|owner| *owner == caller.owner)
    }

    pub(crate) fn new(catalog: Arc<Catalog>, run_options: exec::Options) -> FlowTools {
        let ended = tokio_util::sync::CancellationToken::new();
        FlowTools {
            _ending: Arc::new(ended.clone().drop_guard()),
            ended,
            catalog,
            run_options,
            log_level: Arc::new(std::sync::atomic::AtomicU8::new(LOGS_OFF)),
            subscriptions: Arc::default(),
            tasks: Arc::default(),
            shared_tasks: None,
            access: Access::local(Arc::new(Auth::open())),
        }
    }

    /// Who may call what, and the audit trail.
    pub(crate) fn with_access(mut self, access: Access) -> FlowTools {
        self.access = access;
        self
    }

    /// Shares one task store between the sessions of a server (tasks outlive the request that
    /// made them, and stateless requests each get a fresh handler).
    pub(crate) fn with_tasks(
        mut self,
        tasks: Arc<rmcp::task_manager::TaskManager>,
        shared: Option<Arc<super::tasks::SharedTasks>>,
    ) -> FlowTools {
        self.tasks = tasks;
        self.shared_tasks = shared;
        self
    }

    /// For stateless HTTP: there is no session to remember a `logging/setLevel` in (the next
    /// request may reach another replica), so op logs at info and above are sent with every
    /// call, as the spec lets a server decide when the client has not set a level.
    pub(crate) fn stateless(catalog: Arc<Catalog>, run_options: exec::Options) -> FlowTools {
        let tools = FlowTools::new(catalog, run_options);
        tools.log_level.store(
            logging::op_level_rank(exec::Level::Info),
            std::sync::atomic::Ordering::Relaxed,
        );
        tools
    }

    /// The tools of the current snapshot `caller` may call: one per flow that can run.
    pub(crate) fn tools(&self, caller: &Caller) -> Vec<Tool> {
        let snapshot = self.catalog.snapshot();
        snapshot
            .live()
            .filter(|(name, _)| caller.may_call(name))
            .map(|(name, flow)| {
                let schema = match &flow.spec.input_schema {
                    Value::Object(map) => map.clone(),
                    _ => Map::new(),
                };
                let mut description = flow.spec.description.clone();
                if description.is_empty() {
                    // An agent picks tools by their description: say at least what it runs.
                    description = format!(
                        "Runs the flow `{name}`: {}",
                        flow.spec.flow_content.split_whitespace().collect::<Vec<_>>().join(" ")
                    );
                }
                if flow.spec.stream {
                    if !description.is_empty() {
                        description.push(' ');
                    }
                    description.push_str("(streams: pass a progressToken to receive chunks as progress notifications)");
                }
                let mut tool = Tool::new(name.clone(), description, Arc::new(schema));
                if let Some(Value::Object(output)) = &flow.spec.output_schema {
                    tool.output_schema = Some(Arc::new(output.clone()));
                }
                if !flow.spec.icons.is_empty() {
                    tool.icons = serde_json::from_value(Value::Array(flow.spec.icons.clone())).ok();
                }
                tool
            })
            .collect()
    }
}

/// What `tasks/*` answer for a task that is another caller's: rmcp's words for one that is
/// not there.
fn unknown_task(id: &str) -> ErrorData {
    ErrorData::invalid_params(format!("unknown task: {id}"), None)
}

/// A content request failed: unknown names are "resource not found" / invalid params.
fn content_error(error: crate::catalog::content::ContentError) -> ErrorData {
    use crate::catalog::content::ContentError;
    match error {
        ContentError::NotFound(message) => ErrorData::resource_not_found(message, None),
        ContentError::Invalid(message) => ErrorData::invalid_params(message, None),
        ContentError::Failed(message) => ErrorData::internal_error(message, None),
        asks @ ContentError::NeedsInput(_) => ErrorData::invalid_request(asks.to_string(), None),
    }
}

/// Runs plugin content code (author code that may block) off the runtime's threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, crate::catalog::content::ContentError> + Send + 'static,
) -> Result<T, ErrorData> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| ErrorData::internal_error(format!("the read failed: {err}"), None))?
        .map_err(content_error)
}

/// What a session announces after a reload: which lists changed, and which subscribed
/// resources read differently now.
#[derive(Default)]
struct Announced {
    resources: String,
    prompts: String,
}

impl Announced {
    /// What `caller` would list: a flow it may not see changes nothing it hears about.
    fn of(snapshot: &crate::catalog::Snapshot, caller: &Caller) -> Announced {
        let listed = crate::catalog::content::list(snapshot, |name| caller.may_call(name));
        Announced {
            resources: format!("{}{}", listed["resources"], listed["templates"]),
            prompts: listed["prompts"].to_string(),
        }
    }
}

impl ServerHandler for FlowTools {
    #[allow(deprecated)] // logging: see the `logging` module
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_logging()
                .enable_completions()
                .enable_prompts()
                .enable_prompts_list_changed()
                .enable_resources()
                .enable_resources_list_changed()
                .enable_resources_subscribe()
                .enable_tools()
                .enable_tool_list_changed()
                .enable_tasks()
                .build(),
        )
        .with_server_info(Implementation::new("flowhost", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Each tool runs a flowhost flow. Stream flows send their chunks as progress \
             notifications when the call carries a progressToken; the result holds the answer \
             as text and {answer, think, tool_calls, usage} as structured content (a flow with \
             an output schema answers with that structure). Resources: each flow as \
             flow://{name}, and what plugins offer; prompts come from plugins.",
        )
    }

    /// A method the server does not know: -32601 naming it (rmcp's default says only the
    /// method's name).
    async fn on_custom_request(
        &self,
        request: rmcp::model::CustomRequest,
        _context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CustomResult, ErrorData> {
        Err(ErrorData::new(
            ErrorCode::METHOD_NOT_FOUND,
            format!(
                "method not found: {} (this server speaks MCP: initialize, tools/*, resources/*, prompts/*, tasks/*, logging/setLevel, completion/complete, ping)",
                request.method
            ),
            None,
        ))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let caller = self.access.caller(&context);
        Ok(ListToolsResult::with_all_items(self.tools(&caller)))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let arguments = request.arguments.clone().unwrap_or_default();
        let exchange = if speaks_2026(&context) {
            Some(Arc::new(Exchange::open(
                request.request_state.as_deref(),
                request.input_responses.as_ref(),
            )?))
        } else {
            None
        };
        let caller = self.access.caller(&context);
        self.call_as(&caller, &request.name, arguments, &context, exchange)
            .await
    }

    #[allow(deprecated)] // logging: see the `logging` module
    async fn set_level(
        &self,
        request: rmcp::model::SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.log_level.store(
            logging::set_level(&request),
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(())
    }

    async fn get_task(
        &self,
        request: rmcp::model::GetTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::GetTaskResult, ErrorData> {
        let caller = self.access.caller(&context);
        if !self.may_touch(&request.task_id, &caller) {
            return Err(unknown_task(&request.task_id));
        }
        match (self.tasks.get_task(&request.task_id), &self.shared_tasks) {
            (Err(unknown), Some(shared)) => {
                match shared.get(&request.task_id, &caller.owner).await? {
                    Some(task) => Ok(rmcp::model::GetTaskResult::new(task)),
                    None => Err(unknown),
                }
            }
            (found, _) => found.map(rmcp::model::GetTaskResult::new),
        }
    }

    async fn update_task(
        &self,
        request: rmcp::model::UpdateTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let caller = self.access.caller(&context);
        if !self.may_touch(&request.task_id, &caller) {
            return Err(unknown_task(&request.task_id));
        }
        let inputs = request.input_responses;
        match &self.shared_tasks {
            Some(shared) if self.tasks.get_task(&request.task_id).is_err() => {
                let text = serde_json::to_string(&inputs).unwrap_or_default();
                match shared.ask(&request.task_id, &caller.owner, text).await? {
                    true => Ok(()),
                    false => self.tasks.update_task(&request.task_id, inputs),
                }
            }
            _ => self.tasks.update_task(&request.task_id, inputs),
        }
    }

    async fn cancel_task(
        &self,
        request: rmcp::model::CancelTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let caller = self.access.caller(&context);
        if !self.may_touch(&request.task_id, &caller) {
            return Err(unknown_task(&request.task_id));
        }
        match (self.tasks.cancel_task(&request.task_id), &self.shared_tasks) {
            (Err(unknown), Some(shared)) => {
                match shared
                    .ask(&request.task_id, &caller.owner, "cancel".into())
                    .await?
                {
                    true => Ok(()),
                    false => Err(unknown),
                }
            }
            (done, _) => done,
        }
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let caller = self.access.caller(&context);
        let listed =
            crate::catalog::content::list(&self.catalog.snapshot(), |name| caller.may_call(name));
        serde_json::from_value(json!({"resources": listed["resources"], "resultType": "complete"}))
            .map_err(|err| {
                ErrorData::internal_error(
                    format!("a plugin listed a malformed resource: {err}"),
                    None,
                )
            })
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let listed = crate::catalog::content::list(&self.catalog.snapshot(), |_| false);
        serde_json::from_value(
            json!({"resourceTemplates": listed["templates"], "resultType": "complete"}),
        )
        .map_err(|err| {
            ErrorData::internal_error(format!("a plugin listed a malformed template: {err}"), None)
        })
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let _span = super::traced::server_span(&context, "resources/read", Some(&request.uri));
        if let Some(refused) = self.refused_resource(&context, &request.uri) {
            return Err(refused);
        }
        let snapshot = self.catalog.snapshot();
        let uri = request.uri.clone();
        let contents = blocking(move || crate::catalog::content::read(&snapshot, &uri))
            .await
            .map_err(|mut error| {
                if error.code == ErrorCode::RESOURCE_NOT_FOUND {
                    error.data = Some(json!({"uri": request.uri}));
                }
                error
            })?;
        let result: ReadResourceResult =
            serde_json::from_value(json!({"contents": contents, "resultType": "complete"}))
                .map_err(|err| {
                    ErrorData::internal_error(
                        format!(
                            "the plugin returned malformed contents for `{}`: {err}",
                            request.uri
                        ),
                        None,
                    )
                })?;
        Ok(result.into())
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        if let Some(refused) = self.refused_resource(&context, &request.uri) {
            return Err(refused);
        }
        if request.uri.len() > MAX_URI_BYTES {
            return Err(ErrorData::invalid_params(
                format!(
                    "the URI is {} bytes; resources/subscribe takes URIs of at most {MAX_URI_BYTES}",
                    request.uri.len()
                ),
                None,
            ));
        }
        let fingerprint =
            crate::catalog::content::fingerprint(&self.catalog.snapshot(), &request.uri);
        let mut subscriptions = self.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
        if subscriptions.len() >= MAX_SUBSCRIPTIONS && !subscriptions.contains_key(&request.uri) {
            return Err(ErrorData::invalid_params(
                format!(
                    "this session already holds {MAX_SUBSCRIPTIONS} subscriptions, the most one may; resources/unsubscribe some first"
                ),
                None,
            ));
        }
        subscriptions.insert(request.uri, fingerprint);
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.subscriptions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&request.uri);
        Ok(())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        let listed = crate::catalog::content::list(&self.catalog.snapshot(), |_| false);
        serde_json::from_value(json!({"prompts": listed["prompts"], "resultType": "complete"}))
            .map_err(|err| {
                ErrorData::internal_error(
                    format!("a plugin listed a malformed prompt: {err}"),
                    None,
                )
            })
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let _span = super::traced::server_span(&context, "prompts/get", Some(&request.name));
        let snapshot = self.catalog.snapshot();
        let name = request.name.clone();
        let arguments = request.arguments.clone().unwrap_or_default();
        // 2026-07-28: a prompt may ask the user first (input-required results).
        let exchange = match speaks_2026(&context) {
            true => Some(Exchange::open(
                request.request_state.as_deref(),
                request.input_responses.as_ref(),
            )?),
            false => None,
        };
        let answers = exchange
            .as_ref()
            .map(|e| e.answers.clone())
            .unwrap_or_default();
        let result = match tokio::task::spawn_blocking(move || {
            crate::catalog::content::prompt(&snapshot, &name, &arguments, &answers)
        })
        .await
        {
            Ok(Err(crate::catalog::content::ContentError::NeedsInput(Value::Object(
                questions,
            )))) if exchange.is_some() => {
                let exchange = exchange.expect("checked");
                *exchange.requests.lock().unwrap_or_else(|p| p.into_inner()) = questions;
                return exchange.input_required().map(GetPromptResponse::from);
            }
            Ok(result) => result.map_err(content_error)?,
            Err(err) => {
                return Err(ErrorData::internal_error(
                    format!("the prompt failed: {err}"),
                    None,
                ))
            }
        };
        let mut result = result;
        result["resultType"] = json!("complete");
        let result: GetPromptResult = serde_json::from_value(result).map_err(|err| {
            ErrorData::internal_error(
                format!("prompt `{}` has malformed messages: {err}", request.name),
                None,
            )
        })?;
        Ok(result.into())
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        // Sessions of the initialize era hear about reloads on their own channel.
        let mut changes = self.catalog.subscribe();
        changes.mark_unchanged();
        let peer = context.peer.clone();
        let catalog = self.catalog.clone();
        let subscriptions = self.subscriptions.clone();
        let ended = self.ended.clone();
        // The session hears as the caller that opened it.
        let caller = self.access.caller_in(&context.extensions);
        tokio::spawn(async move {
            let mut announced = Announced::of(&catalog.snapshot(), &caller);
            loop {
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { break },
                    _ = ended.cancelled() => break,
                }
                let snapshot = catalog.snapshot();
                let now = Announced::of(&snapshot, &caller);
                let mut sent = peer.notify_tool_list_changed().await;
                if now.resources != announced.resources {
                    sent = sent.and(peer.notify_resource_list_changed().await);
                }
                if now.prompts != announced.prompts {
                    sent = sent.and(peer.notify_prompt_list_changed().await);
                }
                announced = now;
                let updated: Vec<String> = {
                    let mut subscribed = subscriptions.lock().unwrap_or_else(|p| p.into_inner());
                    subscribed
                        .iter_mut()
                        .filter_map(|(uri, last)| {
                            let fingerprint = crate::catalog::content::fingerprint(&snapshot, uri);
                            (fingerprint != *last).then(|| {
                                *last = fingerprint;
                                uri.clone()
                            })
                        })
                        .collect()
                };
                for uri in updated {
                    let param = rmcp::model::ResourceUpdatedNotificationParam::new(uri);
                    sent = sent.and(peer.notify_resource_updated(param).await);
                }
                if sent.is_err() {
                    break;
                }
            }
        });
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        Some(requested.clone())
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        // 2026-07-28 clients subscribe with `subscriptions/listen` instead.
        let mut changes = self.catalog.subscribe();
        changes.mark_unchanged();
        let accepted = context.accepted().clone();
        let wants = |flag: Option<bool>| flag == Some(true);
        let caller = self.access.caller(context.request_context());
        let mut announced = Announced::of(&self.catalog.snapshot(), &caller);
        let mut fingerprints: Vec<(String, Option<String>)> = {
            let snapshot = self.catalog.snapshot();
            accepted
                .resource_subscriptions
                .iter()
                .flatten()
                // A flow it may not read is never announced to it.
                .filter(|uri| {
                    crate::catalog::content::flow_of_uri(uri)
                        .is_none_or(|flow| !caller.refused(flow, snapshot.get(flow).is_some()))
                })
                .map(|uri| {
                    (
                        uri.clone(),
                        crate::catalog::content::fingerprint(&snapshot, uri),
                    )
                })
                .collect()
        };
        loop {
            tokio::select! {
                _ = context.cancelled() => return Ok(()),
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let snapshot = self.catalog.snapshot();
                    let now = Announced::of(&snapshot, &caller);
                    let sink = context.sink();
                    let mut sent = Ok(());
                    if wants(accepted.tools_list_changed) {
                        sent = sent.and(sink.notify_tool_list_changed().await);
                    }
                    if wants(accepted.resources_list_changed) && now.resources != announced.resources {
                        sent = sent.and(sink.notify_resource_list_changed().await);
                    }
                    if wants(accepted.prompts_list_changed) && now.prompts != announced.prompts {
                        sent = sent.and(sink.notify_prompt_list_changed().await);
                    }
                    announced = now;
                    for (uri, last) in &mut fingerprints {
                        let fingerprint = crate::catalog::content::fingerprint(&snapshot, uri);
                        if fingerprint != *last {
                            *last = fingerprint;
                            sent = sent.and(sink.notify_resource_updated(uri.clone()).await);
                        }
                    }
                    if sent.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}
