//! Column types, columns and table schemas.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Result, TableError};

/// Largest decimal precision (Arrow's Decimal128).
pub const MAX_DECIMAL_PRECISION: u8 = 38;
/// Most columns a table may have.
pub const MAX_COLUMNS: usize = 1024;

/// A column's type; each maps to one Arrow type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ColumnType {
    /// Arrow Int8 (`TINYINT`).
    Int8,
    /// Arrow Int16 (`SMALLINT`).
    Int16,
    /// Arrow Int32 (`INT`).
    Int32,
    /// Arrow Int64 (`BIGINT`).
    Int64,
    /// Arrow UInt64 (`BIGINT UNSIGNED`).
    UInt64,
    /// Arrow Float32 (`REAL`, `FLOAT`).
    Float32,
    /// Arrow Float64 (`DOUBLE`).
    Float64,
    /// Arrow Decimal128 (`DECIMAL(p, s)`): an integer scaled by 10^-scale.
    Decimal {
        /// Total digits.
        precision: u8,
        /// Digits after the point.
        scale: u8,
    },
    /// Arrow Boolean.
    Boolean,
    /// Arrow Utf8 (`VARCHAR`, `TEXT`).
    Utf8,
    /// Arrow Binary (`VARBINARY`, `BYTEA`).
    Binary,
    /// Arrow Date32: days since 1970-01-01.
    Date32,
    /// Arrow Timestamp(Microsecond, UTC).
    Timestamp,
}

impl ColumnType {
    /// Whether values of the type can be summed (integers, floats, decimals).
    pub fn is_numeric(&self) -> bool {
        matches!(
            self,
            ColumnType::Int8
                | ColumnType::Int16
                | ColumnType::Int32
                | ColumnType::Int64
                | ColumnType::UInt64
                | ColumnType::Float32
                | ColumnType::Float64
                | ColumnType::Decimal { .. }
        )
    }

    /// Parses a SQL type name (`BIGINT`, `VARCHAR(20)`, `DECIMAL(10,2)`, `TIMESTAMP`...).
    pub fn parse(text: &str) -> Result<ColumnType> {
        let t = text.trim().to_ascii_uppercase();
        let (base, args) = match t.find('(') {
            Some(i) => {
                let close = t
                    .rfind(')')
                    .filter(|c| *c > i)
                    .ok_or_else(|| TableError::Schema(format!("type '{text}': missing ')'")))?;
                (t[..i].trim().to_string(), Some(t[i + 1..close].to_string()))
            }
            None => (t.clone(), None),
        };
        let base = base.split_whitespace().collect::<Vec<_>>().join(" ");
        let ty = match base.as_str() {
            "TINYINT" | "INT8" => ColumnType::Int8,
            "SMALLINT" | "INT16" => ColumnType::Int16,
            "INT" | "INTEGER" | "INT32" => ColumnType::Int32,
            "BIGINT" | "INT64" | "LONG" => ColumnType::Int64,
            "BIGINT UNSIGNED" | "UBIGINT" | "UINT64" => ColumnType::UInt64,
            "REAL" | "FLOAT" | "FLOAT4" | "FLOAT32" => ColumnType::Float32,
            "DOUBLE" | "DOUBLE PRECISION" | "FLOAT8" | "FLOAT64" => ColumnType::Float64,
            "DECIMAL" | "NUMERIC" => {
                let (precision, scale) = match &args {
                    None => (38, 10),
                    Some(a) => {
                        let parts: Vec<&str> = a.split(',').map(str::trim).collect();
                        let num = |s: &str| {
                            s.parse::<u8>().map_err(|_| {
                                TableError::Schema(format!("type '{text}': '{s}' is not a number"))
                            })
                        };
                        match parts.as_slice() {
                            [p] => (num(p)?, 0),
                            [p, s] => (num(p)?, num(s)?),
                            _ => {
                                return Err(TableError::Schema(format!(
                                    "type '{text}': expected DECIMAL(precision, scale)"
                                )))
                            }
                        }
                    }
                };
                if precision == 0 || precision > MAX_DECIMAL_PRECISION || scale > precision {
                    return Err(TableError::Schema(format!(
                        "type '{text}': precision must be 1..={MAX_DECIMAL_PRECISION} and scale <= precision"
                    )));
                }
                return Ok(ColumnType::Decimal { precision, scale });
            }
            "BOOLEAN" | "BOOL" => ColumnType::Boolean,
            "VARCHAR" | "CHAR" | "TEXT" | "STRING" | "UTF8" | "CHARACTER VARYING" => {
                ColumnType::Utf8
            }
            "BINARY" | "VARBINARY" | "BYTEA" | "BLOB" | "BYTES" => ColumnType::Binary,
            "DATE" | "DATE32" => ColumnType::Date32,
            "TIMESTAMP" | "DATETIME" | "TIMESTAMPTZ" => ColumnType::Timestamp,
            _ => {
                return Err(TableError::Schema(format!(
                "unknown type '{text}' (try BIGINT, INT, DOUBLE, DECIMAL(p,s), BOOLEAN, VARCHAR, \
                     VARBINARY, DATE, TIMESTAMP)"
            )))
            }
        };
        // Lengths such as VARCHAR(20) are accepted and not enforced, as in PostgreSQL's TEXT.
        Ok(ty)
    }

    /// The SQL name, as `parse` reads it back.
    pub fn sql_name(&self) -> String {
        match self {
            ColumnType::Int8 => "TINYINT".into(),
            ColumnType::Int16 => "SMALLINT".into(),
            ColumnType::Int32 => "INT".into(),
            ColumnType::Int64 => "BIGINT".into(),
            ColumnType::UInt64 => "BIGINT UNSIGNED".into(),
            ColumnType::Float32 => "REAL".into(),
            ColumnType::Float64 => "DOUBLE".into(),
            ColumnType::Decimal { precision, scale } => format!("DECIMAL({precision},{scale})"),
            ColumnType::Boolean => "BOOLEAN".into(),
            ColumnType::Utf8 => "VARCHAR".into(),
            ColumnType::Binary => "VARBINARY".into(),
            ColumnType::Date32 => "DATE".into(),
            ColumnType::Timestamp => "TIMESTAMP".into(),
        }
    }

    /// The Arrow type's name, for people who think in Arrow.
    pub fn arrow_name(&self) -> String {
        match self {
            ColumnType::Int8 => "Int8".into(),
            ColumnType::Int16 => "Int16".into(),
            ColumnType::Int32 => "Int32".into(),
            ColumnType::Int64 => "Int64".into(),
            ColumnType::UInt64 => "UInt64".into(),
            ColumnType::Float32 => "Float32".into(),
            ColumnType::Float64 => "Float64".into(),
            ColumnType::Decimal { precision, scale } => format!("Decimal128({precision}, {scale})"),
            ColumnType::Boolean => "Boolean".into(),
            ColumnType::Utf8 => "Utf8".into(),
            ColumnType::Binary => "Binary".into(),
            ColumnType::Date32 => "Date32".into(),
            ColumnType::Timestamp => "Timestamp(Microsecond, UTC)".into(),
        }
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.sql_name())
    }
}

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    /// Column name (case preserved, looked up case-insensitively).
    pub name: String,
    /// Its type.
    pub ty: ColumnType,
    /// Whether it may hold NULL (primary-key columns never do).
    pub nullable: bool,
}

/// A table's columns and primary key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSchema {
    /// Columns in declaration order; rows list their values in this order.
    pub columns: Vec<Column>,
    /// Indexes into `columns` of the primary key, in key order.
    pub primary_key: Vec<usize>,
}

impl TableSchema {
    /// Parses `'id BIGINT, name VARCHAR NOT NULL, price DECIMAL(10,2)'` with the key columns named
    /// in `primary_key`.
    pub fn parse(columns: &str, primary_key: &[String]) -> Result<TableSchema> {
        let mut cols = Vec::new();
        for def in split_top_level(columns) {
            let def = def.trim();
            if def.is_empty() {
                continue;
            }
            let (name, rest) = def.split_once(char::is_whitespace).ok_or_else(|| {
                TableError::Schema(format!("column '{def}' has no type (write 'name TYPE')"))
            })?;
            let mut ty_text = rest.trim().to_string();
            let mut nullable = true;
            let upper = ty_text.to_ascii_uppercase();
            if let Some(stripped) = upper.strip_suffix("NOT NULL") {
                nullable = false;
                ty_text = ty_text[..stripped.len()].trim().to_string();
            } else if let Some(stripped) = upper.strip_suffix(" NULL") {
                ty_text = ty_text[..stripped.len()].trim().to_string();
            }
            cols.push(Column {
                name: name.trim_matches('"').to_string(),
                ty: ColumnType::parse(&ty_text)?,
                nullable,
            });
        }
        TableSchema::new(cols, primary_key)
    }

    /// Builds and checks a schema from columns and the names of its key columns.
    pub fn new(mut columns: Vec<Column>, primary_key: &[String]) -> Result<TableSchema> {
        if columns.is_empty() {
            return Err(TableError::Schema(
                "a table needs at least one column".into(),
            ));
        }
        if columns.len() > MAX_COLUMNS {
            return Err(TableError::Schema(format!(
                "a table may have at most {MAX_COLUMNS} columns"
            )));
        }
        for (i, c) in columns.iter().enumerate() {
            if c.name.is_empty()
                || !c
                    .name
                    .chars()
                    .all(|ch| ch.is_alphanumeric() || ch == '_' || ch == '-')
            {
                return Err(TableError::Schema(format!(
                    "column name '{}' must be letters, digits, '_' or '-'",
                    c.name
                )));
            }
            if columns[..i]
                .iter()
                .any(|o| o.name.eq_ignore_ascii_case(&c.name))
            {
                return Err(TableError::Schema(format!(
                    "column '{}' is declared twice",
                    c.name
                )));
            }
        }
        if primary_key.is_empty() {
            return Err(TableError::Schema(
                "a table needs a primary key (--primary-key col[,col...])".into(),
            ));
        }
        let mut pk = Vec::with_capacity(primary_key.len());
        for name in primary_key {
            let i = columns
                .iter()
                .position(|c| c.name.eq_ignore_ascii_case(name.trim()))
                .ok_or_else(|| {
                    TableError::Schema(format!("primary key column '{name}' is not a column"))
                })?;
            if pk.contains(&i) {
                return Err(TableError::Schema(format!(
                    "primary key names '{name}' twice"
                )));
            }
            columns[i].nullable = false;
            pk.push(i);
        }
        Ok(TableSchema {
            columns,
            primary_key: pk,
        })
    }

    /// The index of the column called `name` (case-insensitive).
    pub fn column_index(&self, name: &str) -> Result<usize> {
        self.columns
            .iter()
            .position(|c| c.name.eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                TableError::Schema(format!(
                    "unknown column '{name}' (columns: {})",
                    self.column_names().join(", ")
                ))
            })
    }

    /// Column names in order.
    pub fn column_names(&self) -> Vec<String> {
        self.columns.iter().map(|c| c.name.clone()).collect()
    }

    /// The key columns, in key order.
    pub fn key_columns(&self) -> impl Iterator<Item = &Column> {
        self.primary_key.iter().map(|i| &self.columns[*i])
    }

    /// Indexes of the columns that are not part of the key, in column order.
    pub fn value_columns(&self) -> Vec<usize> {
        (0..self.columns.len())
            .filter(|i| !self.primary_key.contains(i))
            .collect()
    }

    /// The columns as the wire describes them (`CreateTable`, `TableInfo`).
    pub fn column_defs(&self) -> Vec<crate::v1::ColumnDef> {
        self.columns
            .iter()
            .map(|c| crate::v1::ColumnDef {
                name: c.name.clone(),
                r#type: c.ty.sql_name(),
                nullable: c.nullable,
            })
            .collect()
    }

    /// A schema from wire column definitions and the names of its key columns.
    pub fn from_column_defs(
        defs: &[crate::v1::ColumnDef],
        primary_key: &[String],
    ) -> Result<TableSchema> {
        let columns = defs
            .iter()
            .map(|d| {
                Ok(Column {
                    name: d.name.clone(),
                    ty: ColumnType::parse(&d.r#type)
                        .map_err(|e| TableError::Schema(format!("column '{}': {e}", d.name)))?,
                    nullable: d.nullable,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        TableSchema::new(columns, primary_key)
    }

    /// The schema as `'id BIGINT NOT NULL, name VARCHAR'` (what `parse` reads).
    pub fn to_sql(&self) -> String {
        self.columns
            .iter()
            .map(|c| {
                format!(
                    "{} {}{}",
                    c.name,
                    c.ty.sql_name(),
                    if c.nullable { "" } else { " NOT NULL" }
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Splits on commas outside parentheses, so `DECIMAL(10,2)` stays whole.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, ch) in s.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_schemas_with_decimals_and_not_null() {
        let s = TableSchema::parse(
            "id BIGINT, name VARCHAR(20) NOT NULL, price DECIMAL(10, 2), at timestamp, ok bool",
            &["id".into()],
        )
        .unwrap();
        assert_eq!(s.columns.len(), 5);
        assert_eq!(
            s.columns[2].ty,
            ColumnType::Decimal {
                precision: 10,
                scale: 2
            }
        );
        assert!(!s.columns[0].nullable, "key columns are NOT NULL");
        assert!(!s.columns[1].nullable);
        assert!(s.columns[2].nullable);
        assert_eq!(s.primary_key, vec![0]);
        let again = TableSchema::parse(&s.to_sql(), &["id".into()]).unwrap();
        assert_eq!(again, s);
        let wire = TableSchema::from_column_defs(&s.column_defs(), &["id".into()]).unwrap();
        assert_eq!(wire, s);
    }

    #[test]
    fn bad_schemas_say_what_is_wrong() {
        let err = |cols: &str, pk: &[&str]| {
            let pk: Vec<String> = pk.iter().map(|s| s.to_string()).collect();
            TableSchema::parse(cols, &pk).unwrap_err().to_string()
        };
        assert!(err("id BIGINT", &[]).contains("primary key"));
        assert!(err("id BIGINT", &["nope"]).contains("'nope' is not a column"));
        assert!(err("id BIGINTEGER", &["id"]).contains("unknown type 'BIGINTEGER'"));
        assert!(err("id", &["id"]).contains("has no type"));
        assert!(err("id INT, ID INT", &["id"]).contains("declared twice"));
        assert!(err("d DECIMAL(50,2)", &["d"]).contains("precision"));
    }
}
