//! Running an op in a unit test, without the host: arguments and a request in, chunks, context
//! writes and log lines out. Cancellation and the LLM service can be scripted. Knows nothing of
//! the host's runtime: it is the same [`Context`] an op gets when the host runs it.
//!
//! ```
//! use op_sdk::testing::Harness;
//! use op_sdk::{Args, ChunkKind, Context, Error, Op};
//! use serde_json::json;
//!
//! struct ShoutOp;
//!
//! impl Op for ShoutOp {
//!     const NAME: &'static str = "ShoutOp";
//!     fn new(_args: &Args) -> Result<Self, Error> {
//!         Ok(ShoutOp)
//!     }
//!     fn execute(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
//!         let loud = ctx.str("query")?.to_uppercase();
//!         ctx.emit(ChunkKind::Answer, &loud);
//!         ctx.set_answer(loud);
//!         Ok(())
//!     }
//! }
//!
//! let run = Harness::new().input(json!({"query": "hi"})).run::<ShoutOp>().unwrap();
//! assert_eq!(run.answer_text(), "HI");
//! assert_eq!(run.writes["answer"], "HI");
//! let missing = Harness::new().run::<ShoutOp>().unwrap_err();
//! assert!(missing.message().contains("query"));
//! ```

use std::cell::RefCell;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::{Args, ChunkKind, Context, Error, Host, Level, Op};

/// Scripted LLM: gets the op's request, returns the deltas to stream and the final JSON.
type Llm = Box<dyn Fn(&Value) -> Result<(Vec<(ChunkKind, String)>, Value), String>>;

type Client = Box<dyn Fn(&str, &Value) -> Result<Value, String>>;

/// Builds one op run: arguments, request, and what the host side does.
pub struct Harness {
    args: Map<String, Value>,
    input: Map<String, Value>,
    cancel_after: Option<usize>,
    llm: Option<Llm>,
    client: Option<Client>,
}

impl Default for Harness {
    fn default() -> Harness {
        Harness::new()
    }
}

/// What one run produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Run {
    /// Every chunk the op emitted, in order (JSON chunks as their JSON text).
    pub chunks: Vec<(ChunkKind, String)>,
    /// What the op wrote into the flow context (`answer` included).
    pub writes: Map<String, Value>,
    pub logs: Vec<(Level, String)>,
    /// Sleeps the op asked for (the harness does not really sleep).
    pub slept: Duration,
}

impl Run {
    /// The text of the answer chunks, joined.
    pub fn answer_text(&self) -> String {
        self.chunks
            .iter()
            .filter(|(kind, _)| *kind == ChunkKind::Answer)
            .map(|(_, text)| text.as_str())
            .collect()
    }
}

impl Harness {
    pub fn new() -> Harness {
        Harness {
            args: Map::new(),
            input: Map::new(),
            cancel_after: None,
            llm: None,
            client: None,
        }
    }

    /// The op's call arguments (`CountOp(n=3)` is `json!({"n": 3})`).
    pub fn args(mut self, args: Value) -> Harness {
        self.args = object(args);
        self
    }

    /// The flow context the op starts with: the request body plus earlier ops' writes.
    pub fn input(mut self, input: Value) -> Harness {
        self.input = object(input);
        self
    }

    /// The consumer goes away after this many chunks: later `emit`s return `false` and
    /// `is_cancelled` turns true, as when a client disconnects.
    pub fn cancel_after(mut self, chunks: usize) -> Harness {
        self.cancel_after = Some(chunks);
        self
    }

    /// Scripts the LLM service: `ctx.chat_stream` / `ctx.chat` get these deltas and this
    /// final summary (`{"answer", "think", "tool_calls", "usage"}`), or the error.
    pub fn llm(
        mut self,
        reply: impl Fn(&Value) -> Result<(Vec<(ChunkKind, String)>, Value), String> + 'static,
    ) -> Harness {
        self.llm = Some(Box::new(reply));
        self
    }

    /// Scripts the client: `ctx.sample`, `ctx.elicit` and `ctx.roots` call this with the
    /// service name (`sample`, `elicit`, `roots`) and the MCP request params, and get its MCP
    /// result (`{"role", "content", "model"}`, `{"action", "content"}`, `{"roots"}`), or the
    /// error.
    pub fn client(
        mut self,
        reply: impl Fn(&str, &Value) -> Result<Value, String> + 'static,
    ) -> Harness {
        self.client = Some(Box::new(reply));
        self
    }

    /// Builds the op from the arguments and runs it once. `Err` is what the host would report
    /// as the op's failure (bad arguments included).
    pub fn run<O: Op>(self) -> Result<Run, Error> {
        let mut op = O::new(&Args::new(self.args.clone()))?;
        let host = TestHost {
            run: RefCell::new(Run::default()),
            cancel_after: self.cancel_after,
            llm: self.llm,
            client: self.client,
        };
        let mut ctx = Context::new(self.input, &host);
        op.execute(&mut ctx)?;
        let writes = ctx.into_writes();
        let mut run = host.run.into_inner();
        run.writes = writes;
        Ok(run)
    }
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        Value::Null => Map::new(),
        other => panic!("the harness takes a JSON object, got {other}"),
    }
}

struct TestHost {
    run: RefCell<Run>,
    cancel_after: Option<usize>,
    llm: Option<Llm>,
    client: Option<Client>,
}

impl TestHost {
    fn gone(&self) -> bool {
        self.cancel_after
            .is_some_and(|limit| self.run.borrow().chunks.len() >= limit)
    }
}

impl Host for TestHost {
    fn emit(&self, kind: u8, content: &str, _json: bool) -> bool {
        if self.gone() {
            return false;
        }
        let kind = ChunkKind::from_u8(kind).unwrap_or(ChunkKind::Error);
        self.run
            .borrow_mut()
            .chunks
            .push((kind, content.to_string()));
        !self.gone()
    }

    fn is_cancelled(&self) -> bool {
        self.gone()
    }

    fn sleep(&self, millis: u64) -> bool {
        self.run.borrow_mut().slept += Duration::from_millis(millis);
        !self.gone()
    }

    fn log(&self, level: Level, message: &str) {
        self.run
            .borrow_mut()
            .logs
            .push((level, message.to_string()));
    }

    fn chat_stream(
        &self,
        request: &str,
        on_chunk: &mut dyn FnMut(u8, &str, bool) -> bool,
    ) -> Result<String, String> {
        let Some(llm) = &self.llm else {
            return Err("no LLM in this test: script one with Harness::llm".into());
        };
        let request: Value = serde_json::from_str(request).map_err(|e| e.to_string())?;
        let (deltas, summary) = llm(&request)?;
        for (kind, text) in &deltas {
            let json = matches!(kind, ChunkKind::Tool | ChunkKind::Usage);
            if !on_chunk(*kind as u8, text, json) {
                break;
            }
        }
        Ok(summary.to_string())
    }

    fn call(&self, service: &str, request: &str) -> Result<String, String> {
        let Some(client) = &self.client else {
            return Err(format!(
                "no client in this test: script one with Harness::client ({service})"
            ));
        };
        let mut request: Value = serde_json::from_str(request).map_err(|e| e.to_string())?;
        // What the host would pass on: sampling params with the options merged in.
        if let Some(map) = request.as_object_mut() {
            map.remove("name");
            if service == "sample" {
                if let Some(Value::Object(options)) = map.remove("options") {
                    map.extend(options);
                }
            }
        }
        client(service, &request).map(|reply| reply.to_string())
    }
}
