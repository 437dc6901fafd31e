"""trioscale's configuration: Headscale's config.yaml keys, read and checked.

    cfg = load_config()            # finds the file, or uses the defaults
    cfg.server_url, cfg.derp.server_enabled, cfg.extras["taildrop.enabled"]

Differences from Headscale are listed in appliance/config-example.yaml.
"""

from .dump import config_to_dict, config_to_yaml
from .errors import ConfigError
from .load import (
    CONFIG_ENV_VAR,
    SYSTEM_CONFIG_PATH,
    config_from_dict,
    default_data_dir,
    find_config_file,
    load_config,
)
from .model import (
    Config,
    DatabaseConfig,
    DERPSettings,
    DNSSettings,
    LogSettings,
    NodeConfig,
    PolicySettings,
    PrefixesConfig,
    TLSSettings,
)
from .values import format_duration, parse_duration, split_host_port

__all__ = [
    "CONFIG_ENV_VAR",
    "SYSTEM_CONFIG_PATH",
    "Config",
    "ConfigError",
    "DERPSettings",
    "DNSSettings",
    "DatabaseConfig",
    "LogSettings",
    "NodeConfig",
    "PolicySettings",
    "PrefixesConfig",
    "TLSSettings",
    "config_from_dict",
    "config_to_dict",
    "config_to_yaml",
    "default_data_dir",
    "find_config_file",
    "format_duration",
    "load_config",
    "parse_duration",
    "split_host_port",
]
