//! Governed HTTP tools against a real local HTTP server: arguments validated
//! before anything is sent, JSON and text answers, failures and timeouts as error
//! outputs the model can read, configurations refused with a clear reason.

use serde_json::json;

use crate::common::mock::{MockUpstream, Reply};
use tollgate::tools::ToolOutput;
use tollgate::tools::http::{HttpTool, HttpToolConfig, ToolConfigError};

fn config(url: &str, timeout_ms: u64) -> HttpToolConfig {
    toml::from_str(&format!(
        r#"
name = "weather__current"
url = "{url}/weather"
description = "Current weather for a city"
parameters = {{ type = "object", properties = {{ city = {{ type = "string" }} }}, required = ["city"], additionalProperties = false }}
has_side_effects = false
timeout_ms = {timeout_ms}
"#
    ))
    .unwrap()
}

fn error_code(output: &ToolOutput) -> String {
    let ToolOutput::Error(text) = output else {
        panic!("expected an error, got {output:?}")
    };
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    v["error"]["code"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_tool_gets_the_arguments_and_its_answer_goes_to_the_model() {
    let mock = MockUpstream::start().await;
    let tool = HttpTool::new(config(&mock.url(), 2000)).unwrap();
    assert!(!tool.has_side_effects());
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    mock.push(Reply::json("{ \"temp_c\" : 18 }"));
    let output = tool.call(&client, &json!({"city": "Paris"})).await;
    assert_eq!(output, ToolOutput::Output("{\"temp_c\":18}".into()));
    let got = &mock.wait_for(1).await[0];
    assert_eq!(got.target, "/weather");
    assert_eq!(got.headers["content-type"], "application/json");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&got.body).unwrap(),
        json!({"city": "Paris"})
    );

    mock.push(Reply::Full {
        status: 200,
        headers: vec![("content-type".into(), "text/plain".into())],
        body: "Sunny, 18 C".into(),
    });
    assert_eq!(
        tool.call(&client, &json!({"city": "Paris"})).await,
        ToolOutput::Output("Sunny, 18 C".into())
    );
}

#[tokio::test]
async fn bad_arguments_never_reach_the_tool() {
    let mock = MockUpstream::start().await;
    let tool = HttpTool::new(config(&mock.url(), 2000)).unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    for args in [
        json!({}),
        json!({"city": 5}),
        json!({"city": "x", "extra": true}),
    ] {
        assert_eq!(
            error_code(&tool.call(&client, &args).await),
            "invalid_arguments",
            "{args}"
        );
    }
    assert!(mock.received().is_empty());
}

#[tokio::test]
async fn failures_and_timeouts_become_error_outputs() {
    let mock = MockUpstream::start().await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let tool = HttpTool::new(config(&mock.url(), 300)).unwrap();
    mock.push(Reply::Full {
        status: 500,
        headers: vec![],
        body: "boom".into(),
    });
    assert_eq!(
        error_code(&tool.call(&client, &json!({"city": "Paris"})).await),
        "tool_failed"
    );
    mock.push(Reply::Hang);
    assert_eq!(
        error_code(&tool.call(&client, &json!({"city": "Paris"})).await),
        "tool_timeout"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gone = HttpTool::new(config(&format!("http://127.0.0.1:{port}"), 2000)).unwrap();
    assert_eq!(
        error_code(&gone.call(&client, &json!({"city": "Paris"})).await),
        "tool_unreachable"
    );
}

#[test]
fn unusable_configurations_are_refused() {
    let mut c = config("http://127.0.0.1:1", 10);
    c.name = "weather.current".into();
    assert!(matches!(HttpTool::new(c), Err(ToolConfigError::Name(_))));
    let mut c = config("http://127.0.0.1:1", 10);
    c.url = "ftp://127.0.0.1/x".into();
    assert!(matches!(HttpTool::new(c), Err(ToolConfigError::Url { .. })));
    let mut c = config("http://127.0.0.1:1", 10);
    c.parameters = json!({"type": "string"});
    assert!(matches!(
        HttpTool::new(c),
        Err(ToolConfigError::Schema { .. })
    ));
    let mut c = config("http://127.0.0.1:1", 10);
    c.parameters = json!({"type": "object", "properties": {"x": {"type": "no-such-type"}}});
    assert!(matches!(
        HttpTool::new(c),
        Err(ToolConfigError::Schema { .. })
    ));
    assert!(matches!(
        HttpTool::new(config("http://127.0.0.1:1", 0)),
        Err(ToolConfigError::Timeout(_))
    ));
    let unknown: Result<HttpToolConfig, _> =
        toml::from_str("name = \"a\"\nurl = \"http://x\"\ncolour = 1\n");
    assert!(unknown.is_err());
}
