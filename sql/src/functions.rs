//! SQL functions Weir adds to DataFusion's: `tumble(ts, interval)`, the start of the fixed window
//! of that length holding `ts` (windows aligned to the Unix epoch), as stream jobs group by it.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::error::{DataFusionError, Result};
use datafusion::functions::datetime::date_bin;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// Every function Weir adds.
pub fn all() -> Vec<ScalarUDF> {
    vec![ScalarUDF::from(Tumble::new())]
}

/// `tumble(ts, interval)`: `date_bin(interval, ts)` with the arguments in window order.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Tumble {
    signature: Signature,
}

impl Default for Tumble {
    fn default() -> Self {
        Self::new()
    }
}

impl Tumble {
    /// The function.
    pub fn new() -> Tumble {
        Tumble {
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for Tumble {
    fn name(&self) -> &str {
        "tumble"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types {
            [DataType::Timestamp(unit, tz), DataType::Interval(_)] => {
                Ok(DataType::Timestamp(*unit, tz.clone()))
            }
            [ts, DataType::Interval(_)] => Err(DataFusionError::Plan(format!(
                "tumble(ts, interval): ts is {ts}, not a timestamp (CAST it AS TIMESTAMP, or \
                 parse it with to_timestamp(text, format))"
            ))),
            [_, other] => Err(DataFusionError::Plan(format!(
                "tumble(ts, interval): the window length is {other}, not an interval (write \
                 INTERVAL '1 minute')"
            ))),
            _ => Err(DataFusionError::Plan(
                "tumble takes two arguments: tumble(ts, INTERVAL '1 minute')".into(),
            )),
        }
    }

    fn simplify(&self, args: Vec<Expr>, _info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        match <[Expr; 2]>::try_from(args) {
            Ok([ts, width]) => Ok(ExprSimplifyResult::Simplified(
                date_bin().call(vec![width, ts]),
            )),
            Err(args) => Ok(ExprSimplifyResult::Original(args)),
        }
    }

    fn invoke_with_args(&self, mut args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        // Reached only where expressions are not simplified first.
        args.args.swap(0, 1);
        args.arg_fields.swap(0, 1);
        let bin: Arc<ScalarUDF> = date_bin();
        bin.invoke_with_args(args)
    }
}
