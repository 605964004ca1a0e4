"""pytest hooks and option registration only; nothing heavy is imported here.

The run's state lives in one object registered in ``pytest_configure``: the
:class:`~pytest_wec.controller.run.WecController` on the controller (or in a run without
xdist), nothing but settings on an xdist worker: the controller's, as it sent them through
``workerinput`` (a worker on another host sees neither the controller's environment nor its
ini file).
"""

from __future__ import annotations

import pytest

from pytest_wec.errors import ConfigError
from pytest_wec.settings import OPTIONS, Settings, resolve

SETTINGS_KEY = pytest.StashKey[Settings]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("wec", "wile-e-coyote: ACME CA load testing")
    for opt in OPTIONS:
        help_text = f"{opt.help} (ini {opt.ini}, env {opt.env})".replace("%", "%%")
        if opt.flag:
            group.addoption(opt.cli, action="store_true", default=None, dest="wec_" + opt.field,
                            help=help_text)
            parser.addini(opt.ini, help=opt.help, type="bool", default=None)
        elif opt.multi:
            group.addoption(opt.cli, action="append", default=None, dest="wec_" + opt.field,
                            metavar=opt.metavar, help=help_text)
            parser.addini(opt.ini, help=opt.help, type="linelist", default=[])
        else:
            group.addoption(opt.cli, action="store", default=None, dest="wec_" + opt.field,
                            metavar=opt.metavar, help=help_text,
                            **({"nargs": "?", "const": opt.const} if opt.const else {}))
            parser.addini(opt.ini, help=opt.help, default=None)


def _resolve(config: pytest.Config) -> Settings:
    cli = {opt.field: config.getoption("wec_" + opt.field) for opt in OPTIONS}

    def ini(name: str) -> object:
        try:
            return config.getini(name)
        except ValueError:
            return None

    try:
        return resolve(cli, ini)
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from pytest_wec import newhooks

    pluginmanager.add_hookspecs(newhooks)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "wec_chain(name, needs, produces): an ACME test chain")
    workerinput = getattr(config, "workerinput", None)
    sent = workerinput.get("wec_settings") if workerinput is not None else None
    if sent is not None:
        try:
            settings = Settings.from_plain(sent)
        except ConfigError as exc:
            raise pytest.UsageError(str(exc)) from None
    else:
        settings = _resolve(config)
    config.stash[SETTINGS_KEY] = settings
    from pytest_wec.worker import fixtures

    config.pluginmanager.register(fixtures, "wec-fixtures")
    if hasattr(config, "workerinput"):
        return
    from pytest_wec.controller.run import WecController

    controller = WecController(config, settings)
    config.pluginmanager.register(controller, "wec-controller")
    if config.pluginmanager.hasplugin("xdist"):
        from pytest_wec.controller.xdist import XdistHooks

        config.pluginmanager.register(XdistHooks(controller), "wec-xdist")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    if config.stash[SETTINGS_KEY].load_mode:
        from pytest_wec.worker.items import collect_load_items

        controller = config.pluginmanager.get_plugin("wec-controller")
        on_xdist_controller = controller is not None and controller.distributing
        collect_load_items(session, config, items, report=not on_xdist_controller)
        if controller is not None:
            controller.chains_ready = True  # the load may start: chains and options are valid
