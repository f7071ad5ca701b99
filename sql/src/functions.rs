//! SQL functions Weir adds to DataFusion's: `tumble(ts, interval)`, the start of the fixed window
//! of that length holding `ts` (windows aligned to the Unix epoch), as stream jobs group by it;
//! and `try_to_date` / `try_to_timestamp(text, format, ...)`, which parse with the first format
//! that fits and give NULL when none does (as Spark's `to_date` does), for cleaning messy input
//! where DataFusion's `to_date` fails the whole query on one bad value; and Postgres's
//! `pg_sleep(seconds)`, which waits without holding a thread. DataFusion's `to_timestamp` family
//! is replaced by itself wrapped in [`Zoned`], whose results carry the session's time zone.

use std::sync::Arc;

use chrono::{NaiveDate, NaiveDateTime};
use datafusion::arrow::array::{
    make_array, Array, ArrayRef, Date32Builder, StringArray, TimestampMicrosecondBuilder,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::config::ConfigOptions;
use datafusion::error::{DataFusionError, Result};
use datafusion::functions::datetime::{self, date_bin};
use datafusion::logical_expr::async_udf::{AsyncScalarUDF, AsyncScalarUDFImpl};
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    TypeSignature, Volatility,
};

/// Every function Weir adds, and those it replaces.
pub fn all() -> Vec<ScalarUDF> {
    let config = ConfigOptions::default();
    let mut all = vec![
        ScalarUDF::from(Tumble::new()),
        ScalarUDF::from(TryParse::new(Parsed::Date)),
        ScalarUDF::from(TryParse::new(Parsed::Timestamp)),
        AsyncScalarUDF::new(Arc::new(PgSleep::new())).into_scalar_udf(),
    ];
    all.extend(
        [
            datetime::to_timestamp(&config),
            datetime::to_timestamp_seconds(&config),
            datetime::to_timestamp_millis(&config),
            datetime::to_timestamp_micros(&config),
            datetime::to_timestamp_nanos(&config),
        ]
        .into_iter()
        .map(|f| Zoned::wrap(f.as_ref().clone())),
    );
    all
}

/// One of DataFusion's `to_timestamp` functions, whose results over a column carry the time zone
/// its type declares. DataFusion 55 declares `Timestamp(unit, <session zone>)` once
/// `datafusion.execution.time_zone` is set but builds the arrays without the zone, and the query
/// fails (apache/datafusion#24632, fixed upstream after 55). The values are the same instants
/// either way, so the zone is only attached.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Zoned {
    inner: ScalarUDF,
}

impl Zoned {
    /// `inner`, with its results' zone attached.
    pub fn wrap(inner: ScalarUDF) -> ScalarUDF {
        ScalarUDF::new_from_impl(Zoned { inner })
    }
}

/// `array` with the time zone of `ty` when both are timestamps of one unit (only the type
/// changes: the values are instants either way); unchanged otherwise.
fn with_zone(array: ArrayRef, ty: &DataType) -> Result<ArrayRef> {
    match (array.data_type(), ty) {
        (DataType::Timestamp(have, zone), DataType::Timestamp(want, want_zone))
            if have == want && zone != want_zone =>
        {
            let data = array
                .to_data()
                .into_builder()
                .data_type(ty.clone())
                .build()?;
            Ok(make_array(data))
        }
        _ => Ok(array),
    }
}

impl ScalarUDFImpl for Zoned {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn with_updated_config(&self, config: &ConfigOptions) -> Option<ScalarUDF> {
        self.inner
            .inner()
            .with_updated_config(config)
            .map(Zoned::wrap)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let ty = args.return_field.data_type().clone();
        // The function's own implementation: `ScalarUDF::invoke_with_args` checks the result's
        // type, which is what this mends.
        Ok(match self.inner.inner().invoke_with_args(args)? {
            ColumnarValue::Array(a) => ColumnarValue::Array(with_zone(a, &ty)?),
            scalar => scalar,
        })
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
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
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn to_timestamp_over_a_column_gives_the_sessions_zone() {
        let ctx = SessionContext::new();
        for f in all() {
            ctx.register_udf(f);
        }
        ctx.sql("SET datafusion.execution.time_zone = '+05:00'")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        for f in [
            "to_timestamp",
            "to_timestamp_seconds",
            "to_timestamp_millis",
        ] {
            let sql = format!(
                "SELECT CAST({f}(s) AS VARCHAR) FROM (VALUES ('2024-01-02T00:00:00')) AS t(s)"
            );
            let batches = ctx.sql(&sql).await.unwrap().collect().await;
            let batches = batches.unwrap_or_else(|e| panic!("{f}: {e}"));
            let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
                .unwrap()
                .to_string();
            assert!(text.contains("2024-01-02T00:00:00+05:00"), "{f}: {text}");
        }
    }

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
