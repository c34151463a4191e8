"""Where the project's configuration files live (one place for settings and strategies)."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "config"
DATASET_CONFIG_DIR = CONFIG_DIR / "datasets"
STRATEGY_CONFIG_DIR = CONFIG_DIR / "strategies"
RISK_CONFIG_DIR = CONFIG_DIR / "risk"
