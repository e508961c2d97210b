//! OperationOutcome issues: what a refused request tells its caller.
//!
//! Diagnostics name elements and rules, never submitted values, so an error message
//! cannot carry health data into logs.

use serde_json::{Value, json};

/// The subset of the `issue-type` value set this server reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueCode {
    Invalid,
    Structure,
    Required,
    Value,
    NotFound,
    Deleted,
    Forbidden,
    NotSupported,
    Conflict,
    TooLong,
    Processing,
    Exception,
    Security,
    Login,
    BusinessRule,
}

impl IssueCode {
    pub fn as_str(self) -> &'static str {
        match self {
            IssueCode::Invalid => "invalid",
            IssueCode::Structure => "structure",
            IssueCode::Required => "required",
            IssueCode::Value => "value",
            IssueCode::NotFound => "not-found",
            IssueCode::Deleted => "deleted",
            IssueCode::Forbidden => "forbidden",
            IssueCode::NotSupported => "not-supported",
            IssueCode::Conflict => "conflict",
            IssueCode::TooLong => "too-long",
            IssueCode::Processing => "processing",
            IssueCode::BusinessRule => "business-rule",
            IssueCode::Exception => "exception",
            IssueCode::Security => "security",
            IssueCode::Login => "login",
        }
    }
}

/// One problem with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub code: IssueCode,
    pub diagnostics: String,
    /// FHIRPath-like location of the problem, when there is one.
    pub expression: Option<String>,
}

impl Issue {
    pub fn new(code: IssueCode, diagnostics: impl Into<String>) -> Self {
        Issue {
            code,
            diagnostics: diagnostics.into(),
            expression: None,
        }
    }

    pub fn at(mut self, expression: impl Into<String>) -> Self {
        self.expression = Some(expression.into());
        self
    }

    fn to_json(&self, severity: &str) -> Value {
        let mut v = json!({
            "severity": severity,
            "code": self.code.as_str(),
            "diagnostics": self.diagnostics,
        });
        if let Some(e) = &self.expression {
            v["expression"] = json!([e]);
        }
        v
    }
}

/// An OperationOutcome holding `issues` as errors.
pub fn operation_outcome(issues: &[Issue]) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": issues.iter().map(|i| i.to_json("error")).collect::<Vec<_>>(),
    })
}

/// An OperationOutcome holding `issues` as warnings (e.g. what a search left out).
pub fn warnings(issues: &[Issue]) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": issues.iter().map(|i| i.to_json("warning")).collect::<Vec<_>>(),
    })
}

/// An OperationOutcome that reports success (e.g. for a delete).
pub fn information(message: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{ "severity": "information", "code": "informational", "diagnostics": message }],
    })
}
