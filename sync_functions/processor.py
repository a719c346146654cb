import azure.functions as func

from shared.sync.processor import process_message

bp = func.Blueprint()


@bp.queue_trigger(arg_name="msg", queue_name="%SYNC_QUEUE_NAME%", connection="AzureWebJobsStorage")
def sync_processor(msg: func.QueueMessage) -> None:
    process_message(msg.get_body(), message_id=msg.id or "", dequeue_count=msg.dequeue_count or 1)
