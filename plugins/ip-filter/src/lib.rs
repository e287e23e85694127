//! PreAuth: refuses clients by IP. `deny` wins over `allow`; a non-empty `allow` admits only
//! the networks it lists.
#![forbid(unsafe_code)]

use std::net::IpAddr;

use ipnet::IpNet;
use plugin_abi::{Config, ConfigProvider, Decision, Host, Plugin, PluginError, PreAuth, Reply, Request};

#[derive(plugin_abi::Plugin)]
#[plugin(name = "ip-filter", capabilities(PreAuth, ConfigProvider))]
pub struct IpFilter {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Settings {
    allow: Vec<String>,
    deny: Vec<String>,
}

fn nets(list: &[String], field: &str) -> Result<Vec<IpNet>, PluginError> {
    list.iter()
        .map(|s| {
            s.parse::<IpNet>().or_else(|_| s.parse::<IpAddr>().map(IpNet::from)).map_err(|_| {
                PluginError::config(format!("{field}: expected a CIDR network or an IP address, found {s:?}"))
            })
        })
        .collect()
}

impl Plugin for IpFilter {
    fn init(config: Config<'_>, _host: Host) -> Result<Self, PluginError> {
        let s: Settings = config.parse()?;
        Ok(IpFilter { allow: nets(&s.allow, "allow")?, deny: nets(&s.deny, "deny")? })
    }
}

impl ConfigProvider for IpFilter {
    const SCHEMA: &'static str = r#"{
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "allow": { "type": "array", "items": { "type": "string" } },
            "deny": { "type": "array", "items": { "type": "string" } }
        }
    }"#;
}

impl IpFilter {
    fn admits(&self, ip: IpAddr) -> bool {
        !self.deny.iter().any(|n| n.contains(&ip))
            && (self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip)))
    }
}

impl PreAuth for IpFilter {
    fn on_pre_auth(&self, req: &Request<'_>) -> Result<Decision, PluginError> {
        let ip = req.context().client_ip();
        let admitted = ip.parse::<IpAddr>().is_ok_and(|ip| self.admits(ip));
        if admitted {
            return Ok(Decision::Continue);
        }
        Ok(Decision::Respond(Reply::error(
            403,
            "permission_error",
            "ip_denied",
            &format!("client address {ip} is not allowed"),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_abi::testing::{MockHost, TestRequest};

    #[test]
    fn deny_wins_and_allow_limits() {
        let p: IpFilter = MockHost::new().init(r#"{"allow": ["127.0.0.0/8", "::1"], "deny": ["127.0.0.2"]}"#).unwrap();
        let decide = |ip: &str| TestRequest::post("/").client_ip(ip).with(|r| p.on_pre_auth(r)).unwrap();
        assert_eq!(decide("127.0.0.1"), Decision::Continue);
        assert_eq!(decide("::1"), Decision::Continue);
        let Decision::Respond(reply) = decide("127.0.0.2") else { panic!("127.0.0.2 is denied") };
        assert_eq!(reply.status(), 403);
        assert!(String::from_utf8_lossy(reply.body_bytes()).contains("ip_denied"));
        assert!(matches!(decide("10.1.2.3"), Decision::Respond(_)));
    }

    #[test]
    fn a_bad_network_is_a_config_error() {
        let err = MockHost::new().init::<IpFilter>(r#"{"deny": ["10.0.0.0/33"]}"#).err().unwrap();
        assert!(err.message.contains("deny: expected a CIDR network"), "{}", err.message);
    }
}
