//! `BurnOp`: returns at once when the request's `ms` is 0, else burns `ms` of CPU without
//! calling the host: an op that is fast for many calls and then slow on one input (a regex or
//! a parser meeting an unlucky input). Tests and the benchmark use it to check that such a call
//! never stalls the host.

use op_sdk::{Args, Context, Error, Op};
use serde_json::Value;

pub struct BurnOp;

impl Op for BurnOp {
    const NAME: &'static str = "BurnOp";
    const DESCRIPTION: &'static str =
        "Burns the request's `ms` milliseconds of CPU (default 0) without calling the host";

    fn new(_args: &Args) -> Result<Self, Error> {
        Ok(BurnOp)
    }

    fn execute(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        let ms = match ctx.get("ms") {
            None | Some(Value::Null) => 0,
            Some(v) => v.as_u64().ok_or_else(|| {
                Error::new(format!(
                    "input `ms` must be a non-negative integer, found {v}"
                ))
            })?,
        };
        let until = std::time::Instant::now() + std::time::Duration::from_millis(ms);
        let mut spins = 0u64;
        while std::time::Instant::now() < until {
            spins = std::hint::black_box(spins.wrapping_add(1));
        }
        ctx.set_answer(format!("burned {ms} ms"));
        Ok(())
    }
}
