//! SQL functions Weir adds to DataFusion's: `tumble(ts, interval)`, the start of the fixed window
//! of that length holding `ts` (windows aligned to the Unix epoch), as stream jobs group by it;
//! and `try_to_date` / `try_to_timestamp(text, format, ...)`, which parse with the first format
//! that fits and give NULL when none does (as Spark's `to_date` does), for cleaning messy input
//! where DataFusion's `to_date` fails the whole query on one bad value; and Postgres's
//! `pg_sleep(seconds)`, which waits without holding a thread.

use std::sync::Arc;

use chrono::{NaiveDate, NaiveDateTime};
use datafusion::arrow::array::{
    Array, ArrayRef, Date32Builder, StringArray, TimestampMicrosecondBuilder,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::functions::datetime::date_bin;
use datafusion::logical_expr::async_udf::{AsyncScalarUDF, AsyncScalarUDFImpl};
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};

/// Every function Weir adds.
pub fn all() -> Vec<ScalarUDF> {
    vec![
        ScalarUDF::from(Tumble::new()),
        ScalarUDF::from(TryParse::new(Parsed::Date)),
        ScalarUDF::from(TryParse::new(Parsed::Timestamp)),
        AsyncScalarUDF::new(Arc::new(PgSleep::new())).into_scalar_udf(),
    ]
}

/// `pg_sleep(seconds)`: waits that long (once per batch for a constant, else the sum of the
/// rows' values) and gives NULL, as in Postgres.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PgSleep {
    signature: Signature,
}

impl Default for PgSleep {
    fn default() -> Self {
        Self::new()
    }
}

impl PgSleep {
    /// The function.
    pub fn new() -> PgSleep {
        PgSleep {
            // Volatile: a sleep must never be folded into a constant at planning.
            signature: Signature::exact(vec![DataType::Float64], Volatility::Volatile),
        }
    }
}

impl ScalarUDFImpl for PgSleep {
    fn name(&self) -> &str {
        "pg_sleep"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        Err(DataFusionError::Internal(
            "pg_sleep runs asynchronously".into(),
        ))
    }
}

#[async_trait::async_trait]
impl AsyncScalarUDFImpl for PgSleep {
    async fn invoke_async_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let seconds = match args.args.first() {
            Some(ColumnarValue::Scalar(ScalarValue::Float64(v))) => v.unwrap_or(0.0),
            Some(ColumnarValue::Array(a)) => {
                let a = cast(a, &DataType::Float64)?;
                let a = a
                    .as_any()
                    .downcast_ref::<datafusion::arrow::array::Float64Array>()
                    .ok_or_else(|| DataFusionError::Internal("pg_sleep: not doubles".into()))?;
                a.iter().flatten().sum()
            }
            other => {
                return Err(DataFusionError::Plan(format!(
                    "pg_sleep takes seconds as a number, not {other:?}"
                )))
            }
        };
        if seconds.is_finite() && seconds > 0.0 {
            tokio::time::sleep(std::time::Duration::from_secs_f64(seconds.min(86_400.0))).await;
        }
        Ok(ColumnarValue::Array(
            datafusion::arrow::array::new_null_array(&DataType::Boolean, rows),
        ))
    }
}

/// `tumble(ts, interval [, lateness])`: `date_bin(interval, ts)` with the arguments in window
/// order. The lateness matters only in a stream job grouping by the window (its windows close that
/// long after the latest event time the job has seen, and stop taking records); in a query over
/// stored rows every record is on time.
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
            signature: Signature::one_of(
                vec![TypeSignature::Any(2), TypeSignature::Any(3)],
                Volatility::Immutable,
            ),
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
            [DataType::Timestamp(unit, tz), DataType::Interval(_)]
            | [DataType::Timestamp(unit, tz), DataType::Interval(_), DataType::Interval(_)] => {
                Ok(DataType::Timestamp(*unit, tz.clone()))
            }
            [ts, DataType::Interval(_)] | [ts, DataType::Interval(_), DataType::Interval(_)] => {
                Err(DataFusionError::Plan(format!(
                    "tumble(ts, interval): ts is {ts}, not a timestamp (CAST it AS TIMESTAMP, or \
                     parse it with to_timestamp(text, format))"
                )))
            }
            [_, other] | [_, other, DataType::Interval(_)] => Err(DataFusionError::Plan(format!(
                "tumble(ts, interval): the window length is {other}, not an interval (write \
                 INTERVAL '1 minute')"
            ))),
            [_, _, other] => Err(DataFusionError::Plan(format!(
                "tumble(ts, interval, lateness): the lateness is {other}, not an interval (write \
                 INTERVAL '10 minutes')"
            ))),
            _ => Err(DataFusionError::Plan(
                "tumble takes two or three arguments: tumble(ts, INTERVAL '1 minute' [, INTERVAL \
                 '10 minutes'])"
                    .into(),
            )),
        }
    }

    fn simplify(&self, mut args: Vec<Expr>, _info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        // The lateness does not change the window a timestamp falls in.
        if args.len() == 3 {
            args.truncate(2);
        }
        match <[Expr; 2]>::try_from(args) {
            Ok([ts, width]) => Ok(ExprSimplifyResult::Simplified(
                date_bin().call(vec![width, ts]),
            )),
            Err(args) => Ok(ExprSimplifyResult::Original(args)),
        }
    }

    fn invoke_with_args(&self, mut args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        // Reached only where expressions are not simplified first.
        args.args.truncate(2);
        args.arg_fields.truncate(2);
        args.args.swap(0, 1);
        args.arg_fields.swap(0, 1);
        let bin: Arc<ScalarUDF> = date_bin();
        bin.invoke_with_args(args)
    }
}

/// What a `try_to_*` function parses text into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Parsed {
    /// `try_to_date`: a DATE.
    Date,
    /// `try_to_timestamp`: a TIMESTAMP (UTC).
    Timestamp,
}

/// `try_to_date(text, format, ...)` and `try_to_timestamp(text, format, ...)`: the value parsed
/// with the first of the chrono formats (`%Y-%m-%d`, `%d/%m/%Y %H:%M`, ...) that fits the whole
/// text (surrounding spaces ignored), or NULL when none does.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TryParse {
    parsed: Parsed,
    signature: Signature,
}

impl TryParse {
    /// The function parsing into `parsed`.
    pub fn new(parsed: Parsed) -> TryParse {
        TryParse {
            parsed,
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }

    fn date(text: &str, formats: &[String]) -> Option<i32> {
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1)?;
        formats.iter().find_map(|f| {
            let d = NaiveDate::parse_from_str(text, f).ok()?;
            i32::try_from(d.signed_duration_since(epoch).num_days()).ok()
        })
    }

    fn timestamp(text: &str, formats: &[String]) -> Option<i64> {
        formats.iter().find_map(|f| {
            let t = NaiveDateTime::parse_from_str(text, f).ok().or_else(|| {
                NaiveDate::parse_from_str(text, f)
                    .ok()?
                    .and_hms_opt(0, 0, 0)
            })?;
            Some(t.and_utc().timestamp_micros())
        })
    }
}

impl ScalarUDFImpl for TryParse {
    fn name(&self) -> &str {
        match self.parsed {
            Parsed::Date => "try_to_date",
            Parsed::Timestamp => "try_to_timestamp",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        if arg_types.len() < 2 {
            return Err(DataFusionError::Plan(format!(
                "{}(text, format, ...) needs the text and at least one format, like '%Y-%m-%d'",
                self.name()
            )));
        }
        Ok(match self.parsed {
            Parsed::Date => DataType::Date32,
            Parsed::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let formats = args.args[1..]
            .iter()
            .map(|a| match a {
                ColumnarValue::Scalar(
                    ScalarValue::Utf8(Some(f))
                    | ScalarValue::Utf8View(Some(f))
                    | ScalarValue::LargeUtf8(Some(f)),
                ) => Ok(f.clone()),
                _ => Err(DataFusionError::Plan(format!(
                    "{}: the formats must be constant strings, like '%Y-%m-%d'",
                    self.name()
                ))),
            })
            .collect::<Result<Vec<String>>>()?;
        let texts = cast(&args.args[0].to_array(args.number_rows)?, &DataType::Utf8)?;
        let texts = texts
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| DataFusionError::Internal("text did not cast to a string".into()))?;
        let out: ArrayRef = match self.parsed {
            Parsed::Date => {
                let mut b = Date32Builder::with_capacity(texts.len());
                for t in texts.iter() {
                    b.append_option(t.and_then(|t| Self::date(t.trim(), &formats)));
                }
                Arc::new(b.finish())
            }
            Parsed::Timestamp => {
                let mut b = TimestampMicrosecondBuilder::with_capacity(texts.len());
                for t in texts.iter() {
                    b.append_option(t.and_then(|t| Self::timestamp(t.trim(), &formats)));
                }
                Arc::new(b.finish().with_timezone("UTC"))
            }
        };
        Ok(ColumnarValue::Array(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_format_that_fits_wins_and_nothing_fitting_is_null() {
        let formats = vec!["%Y-%m-%d".to_string(), "%d/%m/%Y".to_string()];
        assert_eq!(TryParse::date("1970-01-02", &formats), Some(1));
        assert_eq!(TryParse::date("02/01/1970", &formats), Some(1));
        assert_eq!(TryParse::date("1970-13-01", &formats), None);
        assert_eq!(TryParse::date("yesterday", &formats), None);
        assert_eq!(
            TryParse::timestamp("1970-01-01 00:00:01", &["%Y-%m-%d %H:%M:%S".to_string()]),
            Some(1_000_000)
        );
        assert_eq!(
            TryParse::timestamp("1970-01-02", &formats),
            Some(86_400_000_000)
        );
    }
}
