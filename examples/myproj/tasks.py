"""The project's tasks: two that clients may start, one that stays internal."""

import time

import taskcast
from celery import shared_task

from myproj.celery import app


@taskcast.expose
@app.task(bind=True)
def import_rows(self, rows: int = 10, delay: float = 0.1) -> dict[str, int]:
    """Import rows, reporting each one with taskcast's ProgressReporter."""
    with taskcast.ProgressReporter(self, total=rows) as progress:
        for row in range(1, rows + 1):
            time.sleep(delay)
            progress.update(row, message=f"row {row} of {rows}")
    return {"imported": rows}


@taskcast.expose(name="report")
@app.task(bind=True)
def build_report(self, pages: int, title: str = "Quarterly report") -> str:
    """Build a report page by page, reporting as celery-progress's ProgressRecorder does."""
    for page in range(1, pages + 1):
        time.sleep(0.1)
        self.update_state(
            state="PROGRESS",
            meta={
                "pending": False,
                "current": page,
                "total": pages,
                "percent": round(page * 100 / pages, 2),
                "description": f"{title}: page {page} of {pages}",
            },
        )
    return f"{title}: {pages} pages"


@shared_task
def cleanup(days: int = 30) -> int:
    """Internal housekeeping: not exposed, so clients cannot start it."""
    return days
