//! The only code that touches FFI: loads a plugin library through abi_stable, checks its
//! version and layout, and calls into it. Knows nothing of flows, runs or transports: callers
//! hand it JSON text and an implementation of the host context.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use abi_stable::library::{lib_header_from_path, AbiHeader, LibraryError, RootModule};
use abi_stable::sabi_types::{RRef, VersionNumber};
use abi_stable::std_types::RStr;
use abi_stable::std_types::{RResult, RString, RVec};
use abi_stable::type_level::downcasting::TD_Opaque;
use op_sdk::ffi::{
    v0, v1, v2, ChunkSinkMut, HostCtx, HostCtx_TO, HostRef, HostServices, HostServices_TO,
    OpLib_Ref, OpMeta, ServicesRef,
};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// A loaded plugin library. Never unloaded: abi_stable leaks libraries by design, so a reload
/// costs the old library's mapped size (see ARCHITECTURE.md).
pub struct Library {
    /// The file as installed in a plugin folder.
    pub(crate) path: PathBuf,
    pub(crate) hash: u64,
    pub plugin_name: String,
    pub plugin_version: String,
    /// The op-sdk version the plugin was built against.
    pub sdk_version: String,
    /// `plugin_name` and `plugin_version` interned, for op call spans (no copy per call; a
    /// library is never unloaded anyway).
    pub(crate) labels: (&'static str, &'static str),
    pub(crate) ops: Vec<OpMeta>,
    /// What the host has seen of each op's calls, in `ops` order.
    pub(crate) speeds: Vec<Arc<super::Speed>>,
    /// Tool descriptions the ops declare, by op name (op-sdk 0.1.2).
    pub(crate) tools: std::collections::HashMap<String, serde_json::Value>,
    /// What the plugin offers besides ops (op-sdk 0.1.3): `{resources, templates, prompts}`,
    /// each a JSON array (empty for older plugins); listed at load and again at every reload.
    content: std::sync::RwLock<Arc<serde_json::Value>>,
    entries: Entries,
}

/// The root module, through the view it was checked against.
#[derive(Clone, Copy)]
enum Module {
    Current(OpLib_Ref),
    /// Built against op-sdk 0.1.0: no host services.
    V0(v0::OpLib_Ref),
    /// Built against op-sdk 0.1.1: the LLM service, no sub-ops or tool descriptions.
    V1(v1::OpLib_Ref),
    /// Built against op-sdk 0.1.2: sub-ops and tools, no content or named services.
    V2(v2::OpLib_Ref),
}

type RunFn = extern "C" fn(RStr<'_>, RStr<'_>, RStr<'_>, HostRef<'_>) -> RResult<RString, RString>;
type ContentFn = extern "C" fn(RStr<'_>) -> RResult<RString, RString>;
type ToolsFn = extern "C" fn() -> RString;

/// `run` with the host services, in the shape of the op-sdk version the plugin was built
/// against (each frozen `HostServices` view is its own type).
#[derive(Clone, Copy)]
enum RunWithServices {
    Current(
        extern "C" fn(
            RStr<'_>,
            RStr<'_>,
            RStr<'_>,
            HostRef<'_>,
            ServicesRef<'_>,
        ) -> RResult<RString, RString>,
    ),
    V2(
        extern "C" fn(
            RStr<'_>,
            RStr<'_>,
            RStr<'_>,
            HostRef<'_>,
            v2::ServicesRef<'_>,
        ) -> RResult<RString, RString>,
    ),
    V1(
        extern "C" fn(
            RStr<'_>,
            RStr<'_>,
            RStr<'_>,
            HostRef<'_>,
            v1::ServicesRef<'_>,
        ) -> RResult<RString, RString>,
    ),
}

/// A plugin's entry points, read once through the view its root module was checked against:
/// the one place that knows which op-sdk version offers what. An entry a version lacks is
/// `None`.
#[derive(Clone, Copy)]
struct Entries {
    plugin_name: RStr<'static>,
    plugin_version: RStr<'static>,
    ops: extern "C" fn() -> RVec<OpMeta>,
    check: extern "C" fn(RStr<'_>, RStr<'_>) -> RResult<(), RString>,
    run: RunFn,
    run_with_services: Option<RunWithServices>,
    /// op-sdk 0.1.2.
    tools: Option<ToolsFn>,
    /// op-sdk 0.1.3.
    content: Option<ContentFn>,
    /// Built before op-sdk 0.1.3 (no `content` entry in its view at all).
    before_content: bool,
}

impl Module {
    fn entries(self) -> Entries {
        match self {
            Module::Current(m) => Entries {
                plugin_name: m.plugin_name(),
                plugin_version: m.plugin_version(),
                ops: m.ops(),
                check: m.check(),
                run: m.run(),
                run_with_services: m.run_with_services().map(RunWithServices::Current),
                tools: m.tools(),
                content: m.content(),
                before_content: false,
            },
            Module::V2(m) => Entries {
                plugin_name: m.plugin_name(),
                plugin_version: m.plugin_version(),
                ops: m.ops(),
                check: m.check(),
                run: m.run(),
                run_with_services: m.run_with_services().map(RunWithServices::V2),
                tools: m.tools(),
                content: None,
                before_content: true,
            },
            Module::V1(m) => Entries {
                plugin_name: m.plugin_name(),
                plugin_version: m.plugin_version(),
                ops: m.ops(),
                check: m.check(),
                run: m.run(),
                run_with_services: m.run_with_services().map(RunWithServices::V1),
                tools: None,
                content: None,
                before_content: true,
            },
            Module::V0(m) => Entries {
                plugin_name: m.plugin_name(),
                plugin_version: m.plugin_version(),
                ops: m.ops(),
                check: m.check(),
                run: m.run(),
                run_with_services: None,
                tools: None,
                content: None,
                before_content: true,
            },
        }
    }
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Library")
            .field("path", &self.path)
            .field("plugin_name", &self.plugin_name)
            .field("plugin_version", &self.plugin_version)
            .finish()
    }
}

/// Why a file was not loaded. `NotLibrary` files are skipped quietly; the others are reported.
#[derive(Debug)]
pub(crate) enum LoadError {
    Io(String),
    /// Not something dlopen accepts (a text file, another architecture, truncated).
    NotLibrary(String),
    /// A shared library without a flowhost root module.
    NotPlugin,
    Incompatible(String),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Io(msg) => write!(f, "cannot read: {msg}"),
            LoadError::NotLibrary(msg) => write!(f, "not a loadable shared library ({msg})"),
            LoadError::NotPlugin => f.write_str(
                "a shared library but not a flowhost plugin (no op-sdk root module; plugins call op_sdk::export_plugin!)",
            ),
            LoadError::Incompatible(msg) => f.write_str(msg),
        }
    }
}

/// Whether a layout mismatch is reported in abi_stable's own words (long, for op-sdk's
/// developers) instead of one line: `FLOWHOST_ABI_DEBUG`, read by the app at start.
static ABI_DEBUG: AtomicBool = AtomicBool::new(false);

/// Turns abi_stable's full layout report on or off (see [`ABI_DEBUG`]).
pub(crate) fn set_abi_debug(on: bool) {
    ABI_DEBUG.store(on, Ordering::Relaxed);
}

/// Hashes a library's bytes (to skip reloads of unchanged files).
pub(crate) fn content_hash(bytes: &[u8]) -> u64 {
    crate::util::stable_hash(bytes)
}

/// Loads the plugin at `path` from a private copy: dlopen de-duplicates by path and a rebuilt
/// file may be rewritten in place, so the host never maps the installed file. The copy lives
/// in a fresh private folder (0700, unpredictable name) that is removed as soon as the library
/// is mapped, so nothing is left behind to prune (only a crash in the middle of a load can
/// leave one folder in the temp directory).
pub(crate) fn load(path: &Path, bytes: &[u8]) -> Result<Library, LoadError> {
    let hash = content_hash(bytes);
    let shadow_dir = tempfile::Builder::new()
        .prefix("flowhost-plugin-")
        .tempdir()
        .map_err(|e| LoadError::Io(format!("cannot create a private temp folder: {e}")))?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plugin".into());
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_default();
    let shadow = shadow_dir.path().join(format!("{stem}-{hash:016x}.{ext}"));
    std::fs::write(&shadow, bytes).map_err(|e| LoadError::Io(e.to_string()))?;
    let result = load_shadow(&shadow);
    // The mapping outlives the file on unix, so the copy and its folder go as soon as it is
    // open.
    drop(shadow_dir);
    let (module, sdk_version) = result?;
    let entries = module.entries();
    let ops = (entries.ops)();
    let tools = entries
        .tools
        .and_then(|tools| {
            let text = catch_unwind(|| tools().into_string()).ok()?;
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&text).ok()
        })
        .map(|map| map.into_iter().collect())
        .unwrap_or_default();
    let content = list_content(entries).map_err(LoadError::Incompatible)?;
    Ok(Library {
        path: path.to_path_buf(),
        hash,
        plugin_name: entries.plugin_name.to_string(),
        plugin_version: entries.plugin_version.to_string(),
        labels: (
            super::intern(entries.plugin_name.as_str()),
            super::intern(entries.plugin_version.as_str()),
        ),
        sdk_version,
        speeds: ops.iter().map(|_| Arc::default()).collect(),
        tools,
        content: std::sync::RwLock::new(Arc::new(content)),
        ops: ops.into_iter().collect(),
        entries,
    })
}

/// A plugin's `{resources, templates, prompts}` (empty lists before op-sdk 0.1.3).
fn list_content(entries: Entries) -> Result<serde_json::Value, String> {
    let mut content = serde_json::json!({"resources": [], "templates": [], "prompts": []});
    let Some(serve) = entries.content else {
        return Ok(content);
    };
    match content_call(serve, &serde_json::json!({"method": "list"})) {
        Ok(serde_json::Value::Object(listed)) => {
            for key in ["resources", "templates", "prompts"] {
                if let Some(list @ serde_json::Value::Array(_)) = listed.get(key) {
                    content[key] = list.clone();
                }
            }
            Ok(content)
        }
        Ok(_) => Err("its content list is not a JSON object".into()),
        Err(message) => Err(format!(
            "listing its resources and prompts failed: {message}"
        )),
    }
}

fn load_shadow(shadow: &Path) -> Result<(Module, String), LoadError> {
    let header = lib_header_from_path(shadow).map_err(|err| match err {
        LibraryError::OpenError { err, .. } => LoadError::NotLibrary(dl_reason(&err.to_string())),
        LibraryError::GetSymbolError { .. } => LoadError::NotPlugin,
        LibraryError::InvalidAbiHeader(found) => LoadError::Incompatible(format!(
            "built with abi_stable {}.{}, host uses {}.{} (rebuild the plugin against this host's op-sdk {})",
            found.abi_major,
            found.abi_minor,
            AbiHeader::VALUE.abi_major,
            AbiHeader::VALUE.abi_minor,
            op_sdk::ffi::SDK_VERSION
        )),
        other => LoadError::Incompatible(first_line(&other.to_string())),
    })?;
    let found = header.version_strings().version.to_string();
    let host = OpLib_Ref::VERSION_STRINGS;
    if let (Ok(found_v), Ok(host_v)) = (
        VersionNumber::new(header.version_strings()),
        VersionNumber::new(host),
    ) {
        let compatible =
            found_v.major == host_v.major && (host_v.major != 0 || found_v.minor == host_v.minor);
        if !compatible {
            return Err(LoadError::Incompatible(format!(
                "built against op-sdk {found}, host speaks {}.{}.x (rebuild the plugin against op-sdk {})",
                host_v.major, host_v.minor, op_sdk::ffi::SDK_VERSION
            )));
        }
    }
    let current = header.init_root_module::<OpLib_Ref>();
    // A plugin built against an older op-sdk 0.1.x has a shorter root module than the current
    // view (abi_stable wants the loader's view to be a prefix of the library's): try the
    // frozen view of its time.
    let current = match current {
        Err(LibraryError::AbiInstability(_)) => {
            if let Ok(module) = header.init_root_module::<v2::OpLib_Ref>() {
                return Ok((Module::V2(module), found));
            }
            if let Ok(module) = header.init_root_module::<v1::OpLib_Ref>() {
                return Ok((Module::V1(module), found));
            }
            if let Ok(module) = header.init_root_module::<v0::OpLib_Ref>() {
                return Ok((Module::V0(module), found));
            }
            current
        }
        other => other,
    };
    match current {
        Ok(module) => Ok((Module::Current(module), found)),
        Err(LibraryError::AbiInstability(e)) if ABI_DEBUG.load(Ordering::Relaxed) => {
            Err(LoadError::Incompatible(e.to_string()))
        }
        Err(LibraryError::AbiInstability(_)) => Err(LoadError::Incompatible(format!(
            "built against op-sdk {found} but its types have a different layout than this host's op-sdk {} (rebuild the plugin)",
            op_sdk::ffi::SDK_VERSION
        ))),
        Err(other) => Err(LoadError::Incompatible(first_line(&other.to_string()))),
    }
}

/// dlopen errors repeat the path; keep the reason.
fn dl_reason(message: &str) -> String {
    let line = first_line(message);
    match line.rsplit_once(": ") {
        Some((_, reason)) if !reason.is_empty() => reason.to_string(),
        _ => line,
    }
}

fn first_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("unknown error")
        .to_string()
}

impl Library {
    /// Builds an op from its arguments without running it.
    pub(crate) fn check(&self, op: &str, args_json: &str) -> Result<(), String> {
        let check = self.entries.check;
        check(RStr::from_str(op), RStr::from_str(args_json))
            .into_result()
            .map_err(|e| e.into_string())
    }

    /// Runs an op; returns the JSON object of context writes, or the error message.
    pub fn run(
        &self,
        op: &str,
        args_json: &str,
        context_json: &str,
        host: &dyn super::Host,
    ) -> Result<String, String> {
        let host = FfiHost(host);
        let host = &host;
        let (op, args, context) = (
            RStr::from_str(op),
            RStr::from_str(args_json),
            RStr::from_str(context_json),
        );
        let ctx = HostCtx_TO::from_ptr(RRef::new(host), TD_Opaque);
        let result = match self.entries.run_with_services {
            Some(RunWithServices::Current(run)) => run(
                op,
                args,
                context,
                ctx,
                HostServices_TO::from_ptr(RRef::new(host), TD_Opaque),
            ),
            Some(RunWithServices::V2(run)) => run(
                op,
                args,
                context,
                ctx,
                v2::HostServices_TO::from_ptr(RRef::new(host), TD_Opaque),
            ),
            Some(RunWithServices::V1(run)) => run(
                op,
                args,
                context,
                ctx,
                v1::HostServices_TO::from_ptr(RRef::new(host), TD_Opaque),
            ),
            None => (self.entries.run)(op, args, context, ctx),
        };
        result
            .into_result()
            .map(|s| s.into_string())
            .map_err(|e| e.into_string())
    }

    /// What the plugin offers besides ops, as last listed.
    pub fn content_list(&self) -> Arc<serde_json::Value> {
        self.content
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Lists the plugin's resources and prompts again (a plugin may offer different ones as
    /// time goes on); returns whether anything changed. A failing list keeps the last one.
    pub(crate) fn refresh_content(&self) -> bool {
        match list_content(self.entries) {
            Ok(content) => {
                let mut current = self.content.write().unwrap_or_else(|p| p.into_inner());
                if **current == content {
                    return false;
                }
                *current = Arc::new(content);
                true
            }
            Err(message) => {
                tracing::warn!(plugin = %self.plugin_name, "{message}; keeping the last list");
                false
            }
        }
    }

    /// A content request (`{"method": "read", "uri"}`, `{"method": "prompt", "name",
    /// "arguments"}`) answered by the plugin; plugins built before op-sdk 0.1.3 have none.
    pub(crate) fn content(&self, request: &serde_json::Value) -> Result<serde_json::Value, String> {
        match self.entries.content {
            Some(serve) => content_call(serve, request),
            None if self.entries.before_content => Err(format!(
                "this plugin was built against op-sdk {}, before resources and prompts (0.1.3)",
                self.sdk_version
            )),
            None => Err("this plugin offers no resources or prompts".into()),
        }
    }
}

fn content_call(
    serve: ContentFn,
    request: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    let request = request.to_string();
    // The plugin side catches its panics; this catches a host-side one in the conversion.
    let reply = catch_unwind(AssertUnwindSafe(|| serve(RStr::from_str(&request))))
        .map_err(|_| "the plugin panicked".to_string())?
        .into_result()
        .map_err(RString::into_string)?;
    serde_json::from_str(reply.as_str())
        .map_err(|err| format!("the plugin's answer is not valid JSON: {err}"))
}

/// A [`super::Host`] as the plugin sees it: the FFI traits, every call wrapped so a panic on the
/// host side never unwinds into the plugin's frames.
struct FfiHost<'a>(&'a dyn super::Host);

impl HostCtx for FfiHost<'_> {
    #[inline]
    fn emit(&self, kind: u8, content: RStr<'_>, json: bool) -> bool {
        catch_unwind(AssertUnwindSafe(|| {
            self.0.emit(kind, content.as_str(), json)
        }))
        .unwrap_or(false)
    }

    fn is_cancelled(&self) -> bool {
        catch_unwind(AssertUnwindSafe(|| self.0.is_cancelled())).unwrap_or(true)
    }

    fn sleep(&self, millis: u64) -> bool {
        catch_unwind(AssertUnwindSafe(|| self.0.sleep(millis))).unwrap_or(false)
    }

    fn log(&self, level: u8, message: RStr<'_>) {
        let level = super::level_from_number(level);
        let _ = catch_unwind(AssertUnwindSafe(|| self.0.log(level, message.as_str())));
    }
}

impl v2::HostServices for FfiHost<'_> {
    fn chat_stream(
        &self,
        request: RStr<'_>,
        on_chunk: ChunkSinkMut<'_>,
    ) -> RResult<RString, RString> {
        HostServices::chat_stream(self, request, on_chunk)
    }

    fn sub_ops(&self) -> RString {
        HostServices::sub_ops(self)
    }

    fn call_sub_ops(&self, calls: RStr<'_>, forward: bool) -> RString {
        HostServices::call_sub_ops(self, calls, forward)
    }
}

impl v1::HostServices for FfiHost<'_> {
    fn chat_stream(
        &self,
        request: RStr<'_>,
        on_chunk: ChunkSinkMut<'_>,
    ) -> RResult<RString, RString> {
        HostServices::chat_stream(self, request, on_chunk)
    }
}

impl HostServices for FfiHost<'_> {
    fn chat_stream(
        &self,
        request: RStr<'_>,
        mut on_chunk: ChunkSinkMut<'_>,
    ) -> RResult<RString, RString> {
        let result = catch_unwind(AssertUnwindSafe(|| {
            self.0
                .chat_stream(request.as_str(), &mut |kind, text, json| {
                    on_chunk.chunk(kind, text.into(), json)
                })
        }));
        match result {
            Ok(Ok(text)) => RResult::ROk(RString::from(text)),
            Ok(Err(message)) => RResult::RErr(RString::from(message)),
            Err(_) => RResult::RErr(RString::from("the host's LLM service panicked")),
        }
    }

    fn sub_ops(&self) -> RString {
        catch_unwind(AssertUnwindSafe(|| self.0.sub_ops()))
            .unwrap_or_else(|_| "[]".into())
            .into()
    }

    fn call_sub_ops(&self, calls: RStr<'_>, forward: bool) -> RString {
        catch_unwind(AssertUnwindSafe(|| {
            self.0.call_sub_ops(calls.as_str(), forward)
        }))
        .unwrap_or_else(|_| "the host panicked while calling sub-ops".into())
        .into()
    }

    fn call(&self, service: RStr<'_>, request: RStr<'_>) -> RResult<RString, RString> {
        match catch_unwind(AssertUnwindSafe(|| {
            self.0.call(service.as_str(), request.as_str())
        })) {
            Ok(Ok(text)) => RResult::ROk(RString::from(text)),
            Ok(Err(message)) => RResult::RErr(RString::from(message)),
            Err(_) => RResult::RErr(RString::from("the host panicked in a service call")),
        }
    }
}

/// Whether a file name looks like a shared library on this platform.
pub(crate) fn is_library_name(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    if name.starts_with('.') {
        return false;
    }
    let ext = std::env::consts::DLL_EXTENSION;
    path.extension().and_then(|e| e.to_str()) == Some(ext)
}
