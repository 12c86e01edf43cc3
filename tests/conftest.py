from revproxy import native


def pytest_report_header() -> str:
    return f"revproxy: {native.describe()}"
