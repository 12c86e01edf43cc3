"""Configuration: the frozen model the proxy runs on, and the TOML loader that builds it."""

from revproxy.config.load import (
    ConfigError,
    load_config,
    load_config_with_warnings,
    parse_address,
    parse_config,
    parse_config_with_warnings,
)
from revproxy.config.model import (
    CertificateConfig,
    Config,
    GlobalConfig,
    HeaderOptions,
    Limits,
    ListenerConfig,
    PoolConfig,
    ServerConfig,
    ServiceConfig,
    Timeouts,
)

__all__ = [
    "CertificateConfig",
    "Config",
    "ConfigError",
    "GlobalConfig",
    "HeaderOptions",
    "Limits",
    "ListenerConfig",
    "PoolConfig",
    "ServerConfig",
    "ServiceConfig",
    "Timeouts",
    "load_config",
    "load_config_with_warnings",
    "parse_address",
    "parse_config",
    "parse_config_with_warnings",
]
