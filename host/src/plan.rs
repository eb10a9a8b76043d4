//! The compiled plan of a flow: what `flow::compile` builds from an expression and `exec` runs.
//! Knows nothing of how it is built or run.

use std::sync::Arc;

use crate::ops::OpHandle;

/// A compiled expression.
#[derive(Debug)]
pub enum Node {
    Call(Step),
    Seq(Vec<Arc<Node>>),
    Par(Vec<Arc<Node>>),
}

/// One op call: the op and its JSON arguments.
#[derive(Debug)]
pub struct Step {
    pub op: Arc<OpHandle>,
    pub args_json: Arc<str>,
}
