//! Shared by the `drover` crate's integration tests: the real server started in-process on port 0
//! with a fresh SQLite store and a known admin token.

use drover_server::{RunningServer, ServerConfig};
use drover_store::testing::TempDir;

/// The admin token every test server is started with.
pub const ADMIN_TOKEN: &str = "drv_test_admin_token_0123456789";

/// A running server on a fresh store (the embedded MQTT broker on a free port too).
pub struct TestServer {
    pub base: String,
    pub server: RunningServer,
    pub dir: TempDir,
}

pub async fn spawn_server() -> TestServer {
    let dir = TempDir::new();
    let mut config = ServerConfig::with_data_dir(&dir.path);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.mqtt = drover_server::mqtt::MqttConfig::Embedded {
        listen: "127.0.0.1:0".parse().unwrap(),
    };
    config.admin_token = Some(ADMIN_TOKEN.to_owned());
    let server = drover_server::start(config, std::future::pending())
        .await
        .expect("server starts");
    TestServer {
        base: format!("http://{}", server.addr),
        server,
        dir,
    }
}
