"""Where a task's and a group's status and live stream are served: the routes are declared
on these paths, and the links a dispatch answers with are built from them (by string
formatting: Starlette's ``url_for`` walks every route, raising and catching an exception
for each that is not the one asked for, which was a fifth of a dispatch's time)."""

TASK_STATUS = "/tasks/{task_id}"
GROUP_STATUS = "/groups/{group_id}"
WS_TASK = "/ws/tasks/{task_id}"
WS_GROUP = "/ws/groups/{group_id}"
